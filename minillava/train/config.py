"""Training recipes: YAML files of stages, each saying how every component trains."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import torch

TUNING_MODES = ("frozen", "full", "lora")
PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTION = ("sdpa", "eager")  # the language model's attention kernel while a stage trains
PARALLEL = ("ddp", "fsdp")  # how a stage splits over the processes of a torchrun
TURNS = ("sequential", "independent")  # how a data source's multi-turn conversations are learned
PREFERENCE_LOSSES = ("sigmoid", "ipo")  # DPO's logistic loss, or IPO's squared one
LORA_TARGETS = {  # exact names of the linear layers LoRA wraps
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype a precision computes in (torch imported here, so reading a recipe stays light)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class Tuning:
    mode: str = "frozen"  # frozen, full or lora
    lr: float | None = None  # None: the stage's lr
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | list[str] = "attention"  # a LORA_TARGETS key or module names


@dataclass
class Preference:
    """The preference objective (`objective: dpo`): how strongly the policy may leave the reference model."""

    beta: float = 0.1  # the KL strength: rewards are beta * (policy - reference) log-probabilities of a reply
    label_smoothing: float = 0.0  # conservative DPO: the assumed share of pairs whose preference is wrong (< 0.5)
    loss: str = "sigmoid"  # sigmoid (DPO) or ipo (IPO: squared distance of the per-token margin from 1 / (2 beta))
    # RPO (Pang et al. 2024): plus this times the chosen replies' per-token cross-entropy, so the policy keeps
    # learning the preferred answers while it separates them from the rejected ones; 0: plain DPO / IPO.
    sft_weight: float = 0.0


@dataclass
class DataSource:
    path: str
    format: str = "auto"
    image_root: str | None = None  # default: the data file's folder
    weight: float = 1.0  # share of each epoch drawn from this source, relative to the others
    # Generate the file first when it is missing: {"kind": "shapes", "n": 200, "seed": 0, "image_size": 64}
    synth: dict | None = None
    # sequential: a conversation is one causal sequence. independent: each question and its reply is an attention
    # block of its own over the shared image prefix, learned as if asked alone (data.tokenize.encode_independent).
    turns: str = "sequential"
    video_frames: int | None = None  # frames sampled from each of its videos; None: the model's video.frames


@dataclass
class EvalSource:
    """Held-out questions answered by generation every `eval_every` steps; the scores join metrics.jsonl."""

    task: str  # an evaluation task: vqa, mc, pope, caption
    path: str  # evaluation samples (JSONL / JSON list, or a LLaVA file)
    image_root: str | None = None  # default: the file's folder
    limit: int | None = 64  # the first N samples: generation is slow next to a training step
    name: str | None = None  # the metrics key prefix; default: the file's stem and the task
    post_prompt: str | None = None  # after every question instead of the task's own ("" for none)


@dataclass
class StageConfig:
    name: str = "align"
    data: list[DataSource] = field(default_factory=list)
    val_data: list[DataSource] = field(default_factory=list)
    evals: list[EvalSource] = field(default_factory=list)
    init_from: str | None = None  # a model folder; default: the previous stage's final/, or a new model
    vision: Tuning = field(default_factory=Tuning)
    projector: Tuning = field(default_factory=lambda: Tuning(mode="full"))
    language_model: Tuning = field(default_factory=Tuning)
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    samples_per_epoch: int | None = None  # default: the sum of the sources' sizes
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine or constant (after warmup)
    objective: str = "sft"  # what the stage minimises: a train.objectives name (sft: the replies' cross-entropy)
    preference: Preference = field(default_factory=Preference)  # the dpo objective's settings
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32, bf16 (autocast, CPU or CUDA), fp16 (CUDA, with a grad scaler)
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the language model's decoder (dynamic shapes)
    # sdpa (torch's fused kernel, transformers' default) or eager (matmul + softmax): for the demo's short
    # sequences on 2 CPU cores, eager's forward + backward is 1.17-1.34x as fast; it holds each layer's L x L
    # scores, so long sequences want sdpa. Training only: the saved model and generation keep the default.
    attention: str = "sdpa"
    # Under torchrun: ddp keeps a whole model on every device; fsdp shards parameters, gradients and optimizer
    # state over the devices (each LM decoder layer, then the rest), for language models that do not fit one.
    parallel: str = "ddp"
    # Keep the frozen encoder's outputs on disk (a memmap in the stage folder) so later epochs skip it.
    feature_cache: bool = False
    feature_cache_dtype: str = "float16"  # float16 (half the disk) or float32
    max_length: int | None = None  # default: the model's
    group_by_length: bool = True
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end (and on SIGTERM / SIGINT)
    keep_last: int = 3
    max_bad_steps: int = 5  # NaN / inf losses in a row before the run stops


@dataclass
class ModelSpec:
    """A new model, used when the first stage has no init_from."""

    vision: str = "efficientnet-lite0"
    llm: str = "smollm2-135m-instruct"
    projector: str = "mlp2x_gelu"
    feature_layer: int | list[int] | None = None  # None: the encoder's default
    select: str = "default"
    image_aspect: str = "pad"
    image_size: int | None = None
    position_channels: int | None = None  # None: the encoder's default (EfficientNet-Lite0 16, ViTs 0)
    color_cells: int | None = None  # mean colours of N x N sub-cells per token (CNN encoders); None: 0
    chat_template: str | None = None  # a model.templates name (chatml) or a Jinja file; None: the LM's own
    # AnyRes (LLaVA-NeXT) tiling: {grid_pinpoints: [[height, width], ...], image_newline: true, max_views: null};
    # None: one view per image
    anyres: dict | None = None
    # How videos become tokens: {frames: 8, max_frames: 32, pool: 2}; None: those defaults
    video: dict | None = None

    def options(self) -> dict:
        """The settings `MiniLlava.from_components` takes after the three component names."""
        return {"feature_layer": self.feature_layer, "select": self.select, "image_aspect": self.image_aspect,
                "image_size": self.image_size, "position_channels": self.position_channels,
                "color_cells": self.color_cells,
                "chat_template": self.chat_template, "anyres": self.anyres_config(), "video": self.video_config()}

    def anyres_config(self):  # -> AnyResConfig | None; imported here, so reading a recipe stays light
        from minillava.model.config import AnyResConfig

        if self.anyres is None:
            return None
        try:
            return AnyResConfig(**self.anyres)
        except TypeError as error:
            raise ValueError(f"model.anyres {self.anyres}: {error}; keys: grid_pinpoints, image_newline, "
                             "max_views") from None

    def video_config(self):  # -> VideoConfig | None
        from minillava.model.config import VideoConfig

        if self.video is None:
            return None
        try:
            return VideoConfig(**self.video)
        except TypeError as error:
            raise ValueError(f"model.video {self.video}: {error}; keys: frames, max_frames, pool") from None


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    model: ModelSpec = field(default_factory=ModelSpec)
    stages: list[StageConfig] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        config = _build(cls, data, "config")
        config.validate()
        return config

    def validate(self) -> None:
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        for stage in self.stages:
            where = f"stage {stage.name!r}"
            if not stage.data:
                raise ValueError(f"{where}: no data")
            if stage.precision not in PRECISIONS:
                raise ValueError(f"{where}: precision {stage.precision!r}; choose one of {PRECISIONS}")
            if stage.attention not in ATTENTION:
                raise ValueError(f"{where}: attention {stage.attention!r}; choose one of {ATTENTION}")
            if stage.parallel not in PARALLEL:
                raise ValueError(f"{where}: parallel {stage.parallel!r}; choose one of {PARALLEL}")
            if stage.parallel == "fsdp" and stage.evals:
                raise ValueError(f"{where}: evals (generation during training) do not run with parallel: fsdp; "
                                 "keep val_data for a validation loss and evaluate final/ with `minillava eval`")
            for source in stage.data + stage.val_data:
                if source.turns not in TURNS:
                    raise ValueError(f"{where}: {source.path}: turns {source.turns!r}; choose one of {TURNS}")
                if source.video_frames is not None and source.video_frames < 1:
                    raise ValueError(f"{where}: {source.path}: video_frames {source.video_frames}: at least 1")
            pref = stage.preference
            if pref.loss not in PREFERENCE_LOSSES:
                raise ValueError(f"{where}: preference.loss {pref.loss!r}; choose one of {PREFERENCE_LOSSES}")
            if pref.beta <= 0 or not 0 <= pref.label_smoothing < 0.5 or pref.sft_weight < 0:
                raise ValueError(f"{where}: preference.beta must be > 0, label_smoothing in [0, 0.5) and "
                                 "sft_weight >= 0")
            if stage.schedule not in ("cosine", "constant"):
                raise ValueError(f"{where}: schedule {stage.schedule!r}; choose cosine or constant")
            if stage.feature_cache and stage.vision.mode != "frozen":
                raise ValueError(f"{where}: feature_cache needs a frozen vision encoder (its outputs must not change)")
            if stage.batch_size < 1 or stage.grad_accum < 1:
                raise ValueError(f"{where}: batch_size and grad_accum must be at least 1")
            for component in ("vision", "projector", "language_model"):
                tuning: Tuning = getattr(stage, component)
                if tuning.mode not in TUNING_MODES:
                    raise ValueError(f"{where}: {component}.mode {tuning.mode!r}; choose one of {TUNING_MODES}")
                if tuning.mode == "lora" and component != "language_model":
                    raise ValueError(f"{where}: LoRA applies to the language model only, not the {component}")
                if isinstance(tuning.lora_targets, str) and tuning.lora_targets not in LORA_TARGETS:
                    raise ValueError(f"{where}: lora_targets {tuning.lora_targets!r}; choose one of "
                                     f"{sorted(LORA_TARGETS)} or a list of module names")


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from plain data, refusing unknown keys with their location."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        values[name] = _convert(name, default, value, f"{where}.{name}", cls, str(known[name].type))
    return cls(**values)


NESTED = {("StageConfig", "data"): DataSource, ("StageConfig", "val_data"): DataSource,
          ("StageConfig", "evals"): EvalSource,
          ("TrainConfig", "stages"): StageConfig}


def _convert(name: str, default: Any, value: Any, where: str, owner: type, annotation: str) -> Any:
    if isinstance(value, str) and "float" in annotation.split(" | "):
        # YAML 1.1 reads 1e-3 (no dot) as a string; a number field takes it as the number it means.
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    item_type = NESTED.get((owner.__name__, name))
    if item_type is not None:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        return [_build(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if is_dataclass(default):
        return _build(type(default), value, where)
    return value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """A YAML recipe with `key.sub=value` overrides (list items by index or by stage name)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the recipe: {error}") from None
    data = apply_overrides(data, overrides)
    try:
        return TrainConfig.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r}: expected key.sub=value")
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = _child(node, part, override)
        last = parts[-1]
        value = yaml.safe_load(raw) if raw else None
        if isinstance(node, list):
            node[_index(node, last, override)] = value
        else:
            node[last] = value
    return data


def _child(node: Any, part: str, override: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, override)]
    if isinstance(node, dict):
        return node.setdefault(part, {})
    raise ValueError(f"override {override!r}: {part!r} is not inside a mapping or list")


def _index(items: list, part: str, override: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ValueError(f"override {override!r}: no list item {part!r}")
