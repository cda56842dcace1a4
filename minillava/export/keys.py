"""Tensor names: ours <-> the Hugging Face LLaVA layout <-> the original LLaVA repository's layout.

Ours (MiniLlava.state_dict):  vision.tower.*, projector.body.{0,2}.*, language_model.<causal LM key>
llava-hf (what every transformers version and vLLM load):
    vision_tower.vision_model.* (CLIP, SigLIP) or vision_tower.* (DINOv2), multi_modal_projector.linear_{1,2}.*,
    language_model.model.*, language_model.lm_head.weight; llava_next (AnyRes) adds image_newline (ours:
    projector.image_newline)
llava-hf as transformers >= 4.52 names them in memory (some tools save these):
    model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*, lm_head.weight
Original LLaVA (LlavaLlamaForCausalLM):
    model.vision_tower.vision_tower.vision_model.*, model.mm_projector.{0,2}.*, model.* (the LM body), lm_head.weight
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Towers whose transformers class keeps its body under `vision_model.` in the original checkpoints (transformers 5
# drops that prefix in memory and puts it back on load, so our in-memory names may lack it).
VISION_MODEL_PREFIXED = ("clip", "siglip")
VISION_TOWER_KINDS = ("clip", "siglip", "dinov2")

# Our projector's Sequential indices <-> the LLaVA projector's names.
PROJECTOR_TO_HF = {"0": "linear_1", "2": "linear_2"}
PROJECTOR_FROM_HF = {hf: ours for ours, hf in PROJECTOR_TO_HF.items()}
# LLaVA-NeXT's learned row end: a projector parameter in our model, a top-level tensor in llava_next checkpoints.
OUR_IMAGE_NEWLINE = "projector.image_newline"
HF_IMAGE_NEWLINE = "image_newline"

# The first segment of an original-LLaVA key under `model.` that is not part of the language model.
_ORIGINAL_NON_LM = ("mm_projector", "vision_tower")


class LayoutError(ValueError):
    """A tensor name that fits none of the expected layouts; the message names it."""


def tower_key_to_hf(key: str, kind: str) -> str:
    """A key of the tower's own state dict (as this transformers names it) -> its original checkpoint name."""
    if kind in VISION_MODEL_PREFIXED and not key.startswith("vision_model."):
        return f"vision_model.{key}"
    return key


def ours_to_hf(key: str, tower_kind: str) -> str:
    """One MiniLlava state-dict key -> its name in a llava-hf checkpoint."""
    head, _, rest = key.partition(".")
    if head == "vision":
        if not rest.startswith("tower."):
            raise LayoutError(f"vision tensor {key!r} is not under vision.tower")
        return "vision_tower." + tower_key_to_hf(rest[len("tower."):], tower_kind)
    if key == OUR_IMAGE_NEWLINE:
        return HF_IMAGE_NEWLINE
    if head == "projector":
        match = re.fullmatch(r"body\.(?:(\d+)\.)?(weight|bias)", rest)  # a linear projector's body has no index
        index = match and (match.group(1) or "0")
        if index not in PROJECTOR_TO_HF:
            raise LayoutError(f"projector tensor {key!r} has no place in the LLaVA projector (linear_1, linear_2)")
        return f"multi_modal_projector.{PROJECTOR_TO_HF[index]}.{match.group(2)}"
    if head == "language_model":
        return key
    raise LayoutError(f"tensor {key!r} belongs to no known component")


def split_hf(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """Group llava-hf checkpoint keys by component: {"vision"|"projector"|"language_model": {key: component key}}.

    Component keys are what the standalone model expects: the tower's own names (`vision_model.*` kept), the
    projector's `{0,2}.{weight,bias}` (and llava_next's `image_newline`), and the causal LM's own names
    (`model.*`, `lm_head.weight`). Both the original names and transformers' in-memory names
    (`model.language_model.*`, ...) are understood.
    """
    groups: dict[str, dict[str, str]] = {"vision": {}, "projector": {}, "language_model": {}}
    for key in keys:
        key_in = key
        if key.startswith("model."):  # transformers' in-memory names
            key_in = key[len("model."):]
            if key_in.startswith("language_model."):
                groups["language_model"]["model." + key_in[len("language_model."):]] = key
                continue
        if key_in == "lm_head.weight":
            groups["language_model"]["lm_head.weight"] = key
        elif key_in == HF_IMAGE_NEWLINE:  # llava_next; ours keeps it with the projector
            groups["projector"][OUR_IMAGE_NEWLINE.removeprefix("projector.")] = key
        elif key_in.startswith("vision_tower."):
            groups["vision"][key_in[len("vision_tower."):]] = key
        elif key_in.startswith("multi_modal_projector."):
            match = re.fullmatch(r"multi_modal_projector\.(linear_1|linear_2)\.(weight|bias)", key_in)
            if not match:
                raise LayoutError(f"checkpoint tensor {key!r}: only linear_1 -> act -> linear_2 projectors load")
            groups["projector"][f"{PROJECTOR_FROM_HF[match.group(1)]}.{match.group(2)}"] = key
        elif key_in.startswith("language_model."):
            groups["language_model"][key_in[len("language_model."):]] = key
        else:
            raise LayoutError(f"checkpoint tensor {key!r} fits no llava-hf component")
    return groups


def split_original(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """Group original-LLaVA keys like `split_hf` does (the LM keeps `model.*` and `lm_head.weight`)."""
    groups: dict[str, dict[str, str]] = {"vision": {}, "projector": {}, "language_model": {}}
    for key in keys:
        if key.startswith("model.mm_projector."):
            rest = key[len("model.mm_projector."):]
            if not re.fullmatch(r"(\d+\.)?(weight|bias)", rest):  # mlp{N}x_gelu: 0., 2., ...; linear: none
                raise LayoutError(f"checkpoint tensor {key!r}: unexpected projector layout")
            groups["projector"][rest] = key
        elif key.startswith("model.vision_tower.vision_tower."):
            groups["vision"][key[len("model.vision_tower.vision_tower."):]] = key
        elif key.startswith("model.") or key == "lm_head.weight":
            if key.split(".")[1] in _ORIGINAL_NON_LM:
                raise LayoutError(f"checkpoint tensor {key!r} fits no original-LLaVA component")
            groups["language_model"][key] = key
        else:
            raise LayoutError(f"checkpoint tensor {key!r} fits no original-LLaVA component")
    return groups
