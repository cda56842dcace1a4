"""Export to the Hugging Face LLaVA format: a folder that `LlavaForConditionalGeneration`, `AutoProcessor`,
`pipeline("image-text-to-text")` and vLLM load without minillava. AnyRes models become `llava_next` folders
(`LlavaNextForConditionalGeneration`): the same tensors plus `image_newline` and the grid resolutions.

What the format cannot express is refused up front with the reason and an alternative: it has one vision
tower (CLIP, SigLIP; DINOv2 for transformers only), one hidden-state layer, a linear -> activation -> linear
projector that keeps every patch token, and an LM stored as `language_model.model.*` + `lm_head`.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from minillava.export.keys import VISION_TOWER_KINDS, ours_to_hf
from minillava.export.processor import (
    ANYRES_PROCESSOR,
    anyres_preprocessor_config,
    multimodal_chat_template,
    preprocessor_config,
    processor_config,
)
from minillava.export.weights import DEFAULT_MAX_SHARD, save_sharded
from minillava.model import MiniLlava
from minillava.paths import atomic_folder

log = logging.getLogger(__name__)

TARGETS = ("transformers", "vllm")
# vLLM's LLaVA builds its tower from these vision config types only.
VLLM_TOWERS = ("clip", "siglip")
# Activation names that transformers' ACT2FN and vLLM both know, for each of our projectors.
PROJECTOR_ACTIVATIONS = {"mlp2x_gelu": "gelu", "linear": "linear"}
# (model_type, architecture) of fixed-size and of AnyRes (LLaVA-NeXT) models.
FIXED_SIZE_LAYOUT = ("llava", "LlavaForConditionalGeneration")
ANYRES_LAYOUT = ("llava_next", "LlavaNextForConditionalGeneration")
# The tokenizer class a transformers 4.x reader knows for a plain tokenizers-backed tokenizer.
LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class ExportError(ValueError):
    """The model has a part the target format cannot express; the message says which and what to use instead."""


@dataclass
class ExportPlan:
    """What the exported config says about the vision side, worked out from the model."""

    tower_kind: str
    feature_layer: int
    select_strategy: str  # transformers' meaning: "default" drops the first token, "full" keeps all
    num_additional_image_tokens: int
    activation: str


def plan_export(model: MiniLlava, target: str = "transformers") -> ExportPlan:
    """Check that the model fits the LLaVA format for `target`; raise ExportError naming what does not."""
    if target not in TARGETS:
        raise ExportError(f"unknown export target {target!r}; choose one of {TARGETS}")
    kind = model.config.vision.name
    if kind not in VISION_TOWER_KINDS:
        raise ExportError(
            f"vision encoder {kind!r} has no Hugging Face LLaVA equivalent (LlavaForConditionalGeneration builds "
            f"its tower from a transformers vision config: CLIP, SigLIP or DINOv2); train with a CLIP or SigLIP "
            f"tower (`minillava init --vision FOLDER`) to export, or keep using the minillava model folder")
    if target == "vllm" and kind not in VLLM_TOWERS:
        raise ExportError(
            f"vLLM's LLaVA accepts CLIP and SigLIP towers only, not {kind!r}; export with --target transformers "
            f"for transformers (which loads {kind}), or train with a CLIP or SigLIP tower for vLLM")
    layers = model.vision.layers
    if len(layers) != 1:
        raise ExportError(
            f"feature layers {layers}: the LLaVA format takes one integer vision_feature_layer (older transformers "
            f"and vLLM cannot concatenate layers); train with a single --feature-layer, e.g. -2")
    drop, prefix = model.vision.drop, model.vision.num_prefix_tokens
    if drop not in (0, 1) or prefix not in (0, 1):
        raise ExportError(f"a tower with {prefix} prefix tokens: the LLaVA format can drop exactly one (CLS)")
    name = model.config.projector
    if name not in PROJECTOR_ACTIVATIONS:
        raise ExportError(
            f"projector {name!r} cannot be expressed: the LLaVA projector is linear_1 -> activation -> linear_2 over "
            f"every patch token (a token-reducing projector like pixel_shuffle_mlp2x_gelu, or more layers, need "
            f"code the format lacks); train with mlp2x_gelu, or keep using the minillava model folder")
    if name == "linear" and target == "vllm":
        raise ExportError("projector 'linear' exports as linear -> identity -> linear, whose activation vLLM "
                          "does not name; train with mlp2x_gelu for vLLM, or export with --target transformers")
    lm = model.language_model
    if hasattr(lm, "peft_config"):
        raise ExportError("the language model still carries LoRA adapters: merge them first "
                          "(model.language_model = model.language_model.merge_and_unload(), or `minillava merge`)")
    if lm.base_model_prefix != "model" or not hasattr(lm, "model"):
        raise ExportError(
            f"language model {type(lm).__name__} keeps its decoder under {lm.base_model_prefix!r}; the LLaVA "
            f"format stores it as language_model.model.* (Llama, Qwen2, Mistral, Gemma and most current LMs); "
            f"choose such an LM")
    if getattr(lm.config, "final_logit_softcapping", None):
        raise ExportError("an LM with final_logit_softcapping: transformers' LLaVA applies its own lm_head "
                          "without the cap, so its logits would differ from ours; choose another LM")
    strategy = "default" if drop == 1 else "full"
    if model.config.anyres is not None:
        check_anyres(model, strategy)
    return ExportPlan(kind, int(layers[0]), strategy, prefix, PROJECTOR_ACTIVATIONS[name])


def check_anyres(model: MiniLlava, select_strategy: str) -> None:
    """Raise ExportError for AnyRes settings that transformers' LLaVA-NeXT cannot reproduce."""
    anyres = model.config.anyres
    if not anyres.image_newline:
        raise ExportError("AnyRes without image_newline: LLaVA-NeXT ends every row of the tile grid with a learned "
                          "image_newline (its processor counts them, its model always adds them); train with "
                          "image_newline on (drop --no-image-newline), or keep using the minillava model folder")
    if anyres.max_views is not None:
        raise ExportError(f"AnyRes token reduction (max_views {anyres.max_views}, LLaVA-OneVision's anyres_max_N): "
                          "LLaVA-NeXT keeps every unpadded patch of the tiles; the LLaVA-OneVision layout is not "
                          "exported yet; train without --anyres-max-views, or keep using the minillava model folder")
    if select_strategy == "full" and model.vision.num_prefix_tokens:
        raise ExportError("select 'full' on a tower with a CLS token: LLaVA-NeXT lays every token of a tile out as "
                          "its patch grid and has no place for the tile's CLS (ours keeps it in the global view "
                          "only); train with select 'default'")
    tower = model.vision.tower.config
    side = tower.image_size
    if tuple(model.vision.transform.size) != (side, side):
        raise ExportError(f"AnyRes views of {model.vision.transform.size} (height, width): LLaVA-NeXT cuts square "
                          f"tiles at the tower config's image_size ({side}x{side}); train at the tower's own size")


def hf_layout(model: MiniLlava) -> tuple[str, str]:
    """(model_type, architecture) of the folder `export_hf_llava` writes for `model`."""
    return FIXED_SIZE_LAYOUT if model.config.anyres is None else ANYRES_LAYOUT


def export_hf_llava(model: MiniLlava, out: str | Path, target: str = "transformers",
                    dtype: torch.dtype | None = None, max_shard_size: str | int = DEFAULT_MAX_SHARD,
                    overwrite: bool = False) -> Path:
    """Write `model` as a llava-hf folder at `out` (built in a temporary sibling, then moved into place)."""
    plan = plan_export(model, target)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another output folder or pass --overwrite")
    with atomic_folder(out) as tmp:
        tensors, vocab_size = hf_tensors(model, plan, dtype or model.dtype)
        save_sharded(tensors, tmp, max_shard_size)
        config = hf_config(model, plan, vocab_size, dtype or model.dtype)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation_config(model, vocab_size))
        write_processor(model, plan, tmp)
    log.info("exported %s (%s tower, %d tokens per image) to %s", target, plan.tower_kind, model.tokens_per_image, out)
    return out


def hf_tensors(model: MiniLlava, plan: ExportPlan, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], int]:
    """The llava-hf tensors, and the LM vocabulary size after making room for the image token."""
    tied = bool(model.language_model.config.tie_word_embeddings)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if tied and key == "language_model.lm_head.weight":
            continue  # loaders tie it to the embeddings
        tensors[ours_to_hf(key, plan.tower_kind)] = value.detach().to(dtype)
    if plan.activation == "linear":  # Linear(dv, dl) -> identity -> Linear(dl, dl) = I
        width = tensors["multi_modal_projector.linear_1.weight"].shape[0]
        tensors["multi_modal_projector.linear_2.weight"] = torch.eye(width, dtype=dtype)
        tensors["multi_modal_projector.linear_2.bias"] = torch.zeros(width, dtype=dtype)
    embed_key = "language_model.model.embed_tokens.weight"
    vocab_size = tensors[embed_key].shape[0]
    if model.image_token_id >= vocab_size:
        # Our forward never looks the image token up, transformers' does: add zero rows up to it (their logits,
        # 0, are suppressed by generation_config.json).
        extra = model.image_token_id + 1 - vocab_size
        for key in (embed_key, "language_model.lm_head.weight"):
            if key in tensors:
                rows = tensors[key]
                tensors[key] = torch.cat([rows, rows.new_zeros(extra, rows.shape[1])])
        vocab_size += extra
    return tensors, vocab_size


def _sub_config(config, **changes) -> dict:
    data = config.to_dict()
    for key in ("_name_or_path", "_model_name_or_path", "transformers_version"):
        data.pop(key, None)
    data.update(changes)
    # transformers 5 writes rope_parameters and dtype; 4.x reads rope_theta / rope_scaling and torch_dtype.
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in data:
        data["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and data.get("rope_scaling") is None:
            data["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in data and "torch_dtype" not in data:
        data["torch_dtype"] = data["dtype"]
    return data


def hf_config(model: MiniLlava, plan: ExportPlan, vocab_size: int, dtype: torch.dtype) -> dict:
    lm_config = model.language_model.config
    dtype_name = str(dtype).removeprefix("torch.")
    tied = bool(lm_config.tie_word_embeddings)
    model_type, architecture = hf_layout(model)
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vision_config": _sub_config(model.vision.tower.config, dtype=dtype_name),
        "text_config": _sub_config(lm_config, vocab_size=vocab_size, dtype=dtype_name),
        "image_token_index": model.image_token_id,
        "image_token_id": model.image_token_id,
        "image_seq_length": model.tokens_per_image,
        "projector_hidden_act": plan.activation,
        "multimodal_projector_bias": True,
        "vision_feature_layer": plan.feature_layer,
        "vision_feature_select_strategy": plan.select_strategy,
        "pad_token_id": model.tokenizer.pad_token_id,
        "tie_word_embeddings": tied,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }
    if model.config.anyres is not None:
        config["image_grid_pinpoints"] = [list(pinpoint) for pinpoint in model.config.anyres.grid_pinpoints]
    return config


def generation_config(model: MiniLlava, vocab_size: int) -> dict:
    """Greedy, stopping where ours stops: at eos or the chat template's end-of-turn token."""
    tokenizer = model.tokenizer
    stops = list(dict.fromkeys(i for i in (tokenizer.eos_token_id, model.encoder.end_of_turn_id) if i is not None))
    config = {"do_sample": False, "eos_token_id": stops, "pad_token_id": tokenizer.pad_token_id,
              "max_new_tokens": 256}
    if tokenizer.bos_token_id is not None:
        config["bos_token_id"] = tokenizer.bos_token_id
    if model.image_token_id >= model.language_model.get_output_embeddings().weight.shape[0]:
        config["suppress_tokens"] = [model.image_token_id]  # the row we added only so the id can be looked up
    return config


def write_processor(model: MiniLlava, plan: ExportPlan, folder: Path) -> None:
    """Tokenizer, image processor, processor settings and chat template files."""
    template = multimodal_chat_template(model.tokenizer.chat_template)
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    _make_tokenizer_config_portable(folder / "tokenizer_config.json", template)
    _drop_automatic_special_tokens(folder)
    anyres = model.config.anyres
    transform = model.vision.transform
    image_config = (preprocessor_config(transform) if anyres is None
                    else anyres_preprocessor_config(transform, anyres.grid_pinpoints))
    _write_json(folder / "preprocessor_config.json", image_config)
    patch = model.vision.tower.config.patch_size
    processor_class = "LlavaProcessor" if anyres is None else ANYRES_PROCESSOR
    _write_json(folder / "processor_config.json",
                processor_config(patch, plan.select_strategy, plan.num_additional_image_tokens,
                                 model.config.image_token, processor_class))
    (folder / "chat_template.jinja").write_text(template)
    _write_json(folder / "chat_template.json", {"chat_template": template})  # read by transformers < 4.50


def _make_tokenizer_config_portable(path: Path, template: str) -> None:
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's name; 4.x knows the old one
        config["tokenizer_class"] = LEGACY_TOKENIZER_CLASS
    for key in ("is_local", "local_files_only"):  # where this copy was loaded from, not a setting
        config.pop(key, None)
    config["chat_template"] = template  # transformers < 4.44 reads it only from here
    # PreTrainedTokenizerFast would also return token_type_ids, which generate() refuses for LLaVA.
    config["model_input_names"] = ["input_ids", "attention_mask"]
    _write_json(path, config)


def _drop_automatic_special_tokens(folder: Path) -> None:
    """Make `tokenizer(text)` add nothing (no BOS): our encoder never adds special tokens beyond what the chat
    template writes, and transformers' processor tokenizes the rendered prompt with add_special_tokens=True."""
    probe = "Describe the image."

    def adds_tokens() -> bool:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return tokenizer(probe)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]

    if not adds_tokens():
        return
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError("the tokenizer adds special tokens to every text and has no tokenizer.json to change; "
                          "transformers' processor would add them to our prompts")
    data = json.loads(path.read_text())
    data["post_processor"] = None
    _write_json(path, data)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(add_bos_token=False, add_eos_token=False)
    _write_json(config_path, config)
    if adds_tokens():
        raise ExportError("could not stop the exported tokenizer from adding special tokens to every text")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
