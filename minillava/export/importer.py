"""Import LLaVA checkpoints into a minillava model folder, to continue training, generate or export them.

Two layouts are read:
- llava-hf (e.g. llava-hf/llava-1.5-7b-hf): config.json with vision_config / text_config, weights named
  vision_tower.*, multi_modal_projector.*, language_model.* (or transformers' in-memory names); llava_next
  (LLaVA-NeXT, e.g. what `minillava export` writes for AnyRes models) adds image_grid_pinpoints and
  image_newline, and becomes an AnyRes model;
- original LLaVA (LlavaLlamaForCausalLM): config.json with mm_vision_tower, mm_projector_type,
  mm_vision_select_layer, mm_vision_select_feature; weights model.*, lm_head.weight, model.mm_projector.*,
  optionally model.vision_tower.vision_tower.*; or a stage-1 folder holding only mm_projector.bin.

The result is a model folder whose tower and language model are ordinary transformers folders inside it
(`vision/`, `language_model/`, referenced by absolute path: keep them in place) and whose model.safetensors holds
the projector. Weights are read with safetensors, or torch.load(weights_only=True) for .bin files; the source
dtype is kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer, LlavaConfig, LlavaNextConfig, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import cached_file

from minillava.data.transforms import ImageTransform
from minillava.export.keys import split_hf, split_original, tower_key_to_hf
from minillava.export.processor import FLATTEN_CONTENT_PREFIX
from minillava.export.weights import load_tensors, save_sharded, weight_files
from minillava.model.config import AnyResConfig, MiniLlavaConfig, VisionConfig
from minillava.model.embedded import resolve_tower
from minillava.model.language import resolve_llm
from minillava.model.llava import WEIGHTS_NAME
from minillava.model.vision import VISION_ENCODERS
from minillava.model.vision.resolve import HF_MODEL_TYPES, vision_config_for
from minillava.paths import atomic_folder

log = logging.getLogger(__name__)

LAYOUTS = ("llava-hf", "original")
VISION_FOLDER = "vision"
LM_FOLDER = "language_model"
PROJECTOR_BIN = "mm_projector.bin"

# Original LLaVA's model classes -> the plain causal LM each wraps.
ORIGINAL_ARCHITECTURES = {
    "LlavaLlamaForCausalLM": "LlamaForCausalLM",
    "LlavaMistralForCausalLM": "MistralForCausalLM",
    "LlavaQwenForCausalLM": "Qwen2ForCausalLM",
}
ORIGINAL_SELECT = {"patch": "default", "cls_patch": "full"}
# LLaVA's image_aspect_ratio -> ours; anything else (anyres, ...) is refused.
ORIGINAL_ASPECTS = {"pad": "pad", "square": "crop", None: "crop"}
# llava-hf model types we read -> their config class (which fills what older files leave to its defaults).
HF_CONFIGS = {"llava": LlavaConfig, "llava_next": LlavaNextConfig}
# llava-hf projector activations we reproduce exactly: GELU (erf) -> mlp2x_gelu; identity -> one linear layer.
HF_ACTIVATIONS = {"gelu": "mlp2x_gelu", "linear": "linear"}

# LLaVA-1.5's conversation format (conv_vicuna_v1), for tokenizers without a chat template: renders only append,
# as our turn-by-turn labels need.
LLAVA_V1_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}"
    "{% else %}{{ 'A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human\\'s questions. ' }}{% endif %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Turns plain-string message content into the content lists a llava-hf processor template iterates over.
_LISTIFY_CONTENT = (
    "{%- set listed = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set listed.messages = listed.messages + [{'role': message['role'], "
    "'content': [{'type': 'text', 'text': message['content']}]}] -%}"
    "{%- else -%}{%- set listed.messages = listed.messages + [message] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = listed.messages -%}"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and the reason."""


def detect_layout(config: dict, source: Path) -> str:
    if "mm_vision_tower" in config or "mm_projector_type" in config:
        return "original"
    if "vision_config" in config or config.get("model_type") == "llava":
        return "llava-hf"
    raise CheckpointError(f"{source / 'config.json'}: neither a llava-hf config (vision_config, text_config) nor an "
                          "original LLaVA config (mm_vision_tower, mm_projector_type)")


def import_llava(source: str | Path, out: str | Path, vision: str | None = None, llm: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write a minillava model folder at `out` from the LLaVA checkpoint folder `source`.

    `vision` / `llm` (folders or hub ids) supply what an original LLaVA checkpoint does not hold: the tower's
    config and preprocessor (default: its mm_vision_tower) and, for a stage-1 folder with only mm_projector.bin,
    the language model (default: its _name_or_path).
    """
    source, out = Path(source), Path(out).resolve()
    config_path = source / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (is {source} a LLaVA checkpoint folder?)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} exists and is not empty; choose another output folder or pass --overwrite")
    config = json.loads(config_path.read_text())
    layout = detect_layout(config, source)
    with atomic_folder(out) as tmp:
        # Component folders are referenced by their final absolute path, which exists once tmp is renamed.
        build = _import_hf if layout == "llava-hf" else _import_original
        model_config, projector, tokenizer = build(source, config, tmp, out, vision, llm)
        save_file({f"projector.{k}": v.contiguous() for k, v in projector.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        model_config.image_token_id = None  # set again when the model loads
        model_config.save(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("imported %s checkpoint %s into %s", layout, source, out)
    return out


# -- llava-hf ---------------------------------------------------------------------------------------------------
def _import_hf(source: Path, raw: dict, tmp: Path, out: Path, vision: str | None, llm: str | None
               ) -> tuple[MiniLlavaConfig, dict[str, torch.Tensor], PreTrainedTokenizerBase]:
    model_type = raw.get("model_type", "llava")
    if model_type not in HF_CONFIGS:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported; supported: {sorted(HF_CONFIGS)}")
    config = HF_CONFIGS[model_type].from_dict(raw)
    vision_type = config.vision_config.model_type
    if vision_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{source}: vision tower type {vision_type!r} is not supported; "
                              f"supported: {sorted(HF_MODEL_TYPES)}")
    kind = HF_MODEL_TYPES[vision_type]
    strategy = config.vision_feature_select_strategy
    if strategy == "default" and VISION_ENCODERS.get(kind).num_prefix_tokens == 0:
        raise CheckpointError(f"{source}: select strategy 'default' drops the first patch token of a {kind} tower "
                              "(which has no CLS token); minillava cannot express that")
    act = config.projector_hidden_act
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"{source}: projector activation {act!r} is not supported; "
                              f"supported: {sorted(HF_ACTIVATIONS)}")
    files = weight_files(source)
    if not files:
        raise CheckpointError(f"{source}: no model.safetensors, pytorch_model.bin or sharded index")
    tensors = load_tensors(files)
    groups = split_hf(tensors)

    tower = {tower_key_to_hf(k, kind): tensors[v] for k, v in groups["vision"].items()}
    _write_tower(tmp / VISION_FOLDER, config.vision_config.to_dict(), kind, tower,
                 _find_file(str(source), "preprocessor_config.json"))
    aspect = ImageTransform.from_hf_preprocessor(tmp / VISION_FOLDER).resize_mode

    parts = {k: tensors[v] for k, v in groups["projector"].items()}
    projector = _hf_projector(parts, act, getattr(config, "multimodal_projector_bias", True), source)
    anyres = _hf_anyres(config, parts, source)
    if anyres is not None:
        projector["image_newline"] = parts["image_newline"]
    lm = {k: tensors[v] for k, v in groups["language_model"].items()}
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = _text_template(_processor_template(source) or tokenizer.chat_template)
    text_config = config.text_config.to_dict()
    if raw.get("tie_word_embeddings"):  # some files say it only at the top level
        text_config["tie_word_embeddings"] = True
    _write_lm(tmp / LM_FOLDER, text_config, lm, tokenizer)
    layer = config.vision_feature_layer
    model_config = MiniLlavaConfig(
        vision=VisionConfig(name=kind, path=str(out / VISION_FOLDER),
                            feature_layer=list(layer) if isinstance(layer, list | tuple) else int(layer),
                            select=strategy, image_aspect=aspect),
        projector=HF_ACTIVATIONS[act], llm=str(out / LM_FOLDER),
        image_token=tokenizer.convert_ids_to_tokens(config.image_token_index), anyres=anyres,
    )
    return model_config, projector, tokenizer


def _hf_anyres(config: LlavaConfig | LlavaNextConfig, parts: dict[str, torch.Tensor], source: Path
               ) -> AnyResConfig | None:
    """LLaVA-NeXT's tiling as our AnyRes setting; None for a fixed-size llava checkpoint."""
    if not isinstance(config, LlavaNextConfig):
        return None
    if "image_newline" not in parts:
        raise CheckpointError(f"{source}: a llava_next checkpoint without the image_newline tensor")
    return AnyResConfig([list(pinpoint) for pinpoint in config.image_grid_pinpoints])


def _hf_projector(parts: dict[str, torch.Tensor], act: str, bias: bool, source: Path) -> dict[str, torch.Tensor]:
    needed = ["0.weight", "2.weight"] + (["0.bias", "2.bias"] if bias else [])
    missing = [k for k in needed if k not in parts]
    if missing:
        raise CheckpointError(f"{source}: projector tensors missing: {missing}")
    w1, w2 = parts["0.weight"], parts["2.weight"]
    b1 = parts.get("0.bias", w1.new_zeros(w1.shape[0]))
    b2 = parts.get("2.bias", w2.new_zeros(w2.shape[0]))
    if act == "linear":  # linear_2(linear_1(x)) is one linear map
        return {"body.weight": w2 @ w1, "body.bias": w2 @ b1 + b2}
    return {"body.0.weight": w1, "body.0.bias": b1, "body.2.weight": w2, "body.2.bias": b2}


def _processor_template(source: Path) -> str | None:
    if (source / "chat_template.jinja").is_file():
        return (source / "chat_template.jinja").read_text()
    if (source / "chat_template.json").is_file():
        return json.loads((source / "chat_template.json").read_text()).get("chat_template")
    return None


def _text_template(template: str | None) -> str | None:
    """A template our encoder can render with plain-string messages.

    Ours (exported by minillava) loses its content-list prefix; another processor template, which iterates over
    content lists, gets a prefix that turns each string into one text part.
    """
    if template is None:
        return None
    if template.startswith(FLATTEN_CONTENT_PREFIX):
        return template[len(FLATTEN_CONTENT_PREFIX):]
    return _LISTIFY_CONTENT + template


# -- original LLaVA ---------------------------------------------------------------------------------------------
def _import_original(source: Path, config: dict, tmp: Path, out: Path, vision: str | None, llm: str | None
                     ) -> tuple[MiniLlavaConfig, dict[str, torch.Tensor], PreTrainedTokenizerBase]:
    architecture = (config.get("architectures") or [None])[0]
    if architecture not in ORIGINAL_ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {architecture!r} is not supported; "
                              f"supported: {sorted(ORIGINAL_ARCHITECTURES)}")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(flag):
            raise CheckpointError(f"{source}: {flag} is set; minillava places image features without extra "
                                  "image start/end or patch tokens")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise CheckpointError(f"{source}: mm_patch_merge_type {config['mm_patch_merge_type']!r} (LLaVA-NeXT AnyRes) "
                              "is not supported; only 'flat'")
    aspect = config.get("image_aspect_ratio")
    if aspect not in ORIGINAL_ASPECTS:
        raise CheckpointError(f"{source}: image_aspect_ratio {aspect!r} is not supported; "
                              f"supported: {sorted(a for a in ORIGINAL_ASPECTS if a)}")
    select = config.get("mm_vision_select_feature", "patch")
    if select not in ORIGINAL_SELECT:
        raise CheckpointError(f"{source}: mm_vision_select_feature {select!r}; supported: {sorted(ORIGINAL_SELECT)}")
    projector_type = config.get("mm_projector_type", "linear")

    tensors = load_tensors(weight_files(source))
    if (source / PROJECTOR_BIN).is_file():
        stage1 = load_tensors([source / PROJECTOR_BIN])
        clash = stage1.keys() & tensors.keys()
        if clash:
            raise CheckpointError(f"{source}: both {PROJECTOR_BIN} and the model weights hold {sorted(clash)[:3]}")
        tensors.update(stage1)
    groups = split_original(tensors)
    if not groups["projector"]:
        raise CheckpointError(f"{source}: no projector tensors (model.mm_projector.*) in the weights or "
                              f"{PROJECTOR_BIN}")
    projector = {k: tensors[v] for k, v in groups["projector"].items()}
    if "0.weight" not in projector and "weight" not in projector:
        raise CheckpointError(f"{source}: unexpected projector tensors {sorted(projector)}")
    projector = {f"body.{k}": v for k, v in projector.items()}

    tower_spec = vision or config.get("mm_vision_tower")
    if not tower_spec:
        raise CheckpointError(f"{source}: no mm_vision_tower in the config; name the tower with --vision")
    vision_config = vision_config_for(tower_spec, feature_layer=int(config.get("mm_vision_select_layer", -2)),
                                      select=ORIGINAL_SELECT[select], image_aspect=ORIGINAL_ASPECTS[aspect])
    if groups["vision"]:  # a checkpoint that trained its tower carries it: its config comes from the spec
        tower_source = resolve_tower(tower_spec)
        tower_config = AutoConfig.from_pretrained(tower_source)
        tower_config = getattr(tower_config, "vision_config", None) or tower_config  # a full CLIP/SigLIP config
        tower = {tower_key_to_hf(k, vision_config.name): tensors[v] for k, v in groups["vision"].items()}
        _write_tower(tmp / VISION_FOLDER, tower_config.to_dict(), vision_config.name, tower,
                     _find_file(tower_source, "preprocessor_config.json"))
        vision_config.path = str(out / VISION_FOLDER)

    lm = {k: tensors[v] for k, v in groups["language_model"].items()}
    if lm:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm_config = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in _ORIGINAL_ONLY_KEYS}
        lm_class = ORIGINAL_ARCHITECTURES[architecture]
        lm_config["model_type"] = _model_type_of(lm_class)
        lm_config["architectures"] = [lm_class]
        lm_spec = str(out / LM_FOLDER)
    else:  # stage 1: only the projector was trained; the LM is the base one
        lm_spec = llm or config.get("_name_or_path")
        if not lm_spec:
            raise CheckpointError(f"{source}: no language model weights and no _name_or_path; name it with --llm")
        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(source, resolve_llm(lm_spec)))
    if not tokenizer.chat_template:
        tokenizer.chat_template = LLAVA_V1_TEMPLATE
        log.info("%s: no chat template; using LLaVA-1.5's (vicuna_v1)", source)
    if lm:
        _write_lm(tmp / LM_FOLDER, lm_config, lm, tokenizer)
    model_config = MiniLlavaConfig(vision=vision_config, projector=projector_type, llm=lm_spec)
    return model_config, projector, tokenizer


# Keys of an original LLaVA config that belong to LLaVA, not to its language model (besides mm_*).
_ORIGINAL_ONLY_KEYS = ("image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length",
                       "tokenizer_padding_side", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj",
                       "unfreeze_mm_vision_tower", "_name_or_path")


def _find_file(source: str, name: str) -> str | None:
    """A file of a local folder or a hub repository, or None when it has none."""
    if Path(source).is_dir():
        path = Path(source) / name
        return str(path) if path.is_file() else None
    return cached_file(source, name, _raise_exceptions_for_missing_entries=False)


def _tokenizer_source(source: Path, fallback: str) -> str:
    has_tokenizer = any((source / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                                "tokenizer.model"))
    return str(source) if has_tokenizer else fallback


def _model_type_of(causal_lm_class: str) -> str:
    for model_type, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        if name == causal_lm_class:
            return model_type
    raise CheckpointError(f"this transformers has no {causal_lm_class}")


# -- writing the component folders ------------------------------------------------------------------------------
def _clean_config(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in ("_name_or_path", "transformers_version")}


def _write_tower(folder: Path, config: dict, kind: str, tensors: dict[str, torch.Tensor], preprocessor: str | None
                 ) -> None:
    if not tensors:
        raise CheckpointError("the checkpoint holds no vision tower tensors")
    if preprocessor is None:
        raise CheckpointError("no preprocessor_config.json for the vision tower")
    folder.mkdir(parents=True)
    config = _clean_config(config)
    config["architectures"] = [VISION_ENCODERS.get(kind).model_class.__name__]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_sharded(tensors, folder)
    shutil.copyfile(preprocessor, folder / "preprocessor_config.json")


def _write_lm(folder: Path, config: dict, tensors: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase
              ) -> None:
    config = _clean_config(config)
    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"language model type {model_type!r} has no causal LM class in this transformers")
    config.setdefault("architectures", [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]])
    if "lm_head.weight" not in tensors and not config.get("tie_word_embeddings"):
        raise CheckpointError("the checkpoint has no lm_head.weight and the LM does not tie it to the embeddings")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_sharded(tensors, folder)
    tokenizer.save_pretrained(folder)
