"""Which adapter serves a `--vision` value: an embedded name, or a Hugging Face folder / hub id."""

from __future__ import annotations

from transformers import AutoConfig

from minillava.model.config import VisionConfig
from minillava.model.embedded import resolve_tower

EMBEDDED_ENCODERS = ("efficientnet-lite0",)
# Exact `model_type` values of Hugging Face configs -> adapter names.
HF_MODEL_TYPES = {
    "clip": "clip", "clip_vision_model": "clip",
    "siglip": "siglip", "siglip_vision_model": "siglip",
    "dinov2": "dinov2",
}


def vision_config_for(spec: str, **options) -> VisionConfig:
    if spec in EMBEDDED_ENCODERS:
        return VisionConfig(name=spec, **options)
    model_type = AutoConfig.from_pretrained(resolve_tower(spec)).model_type
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"{spec}: vision model_type {model_type!r} is not supported; "
                         f"supported: {sorted(HF_MODEL_TYPES)} or {EMBEDDED_ENCODERS}")
    return VisionConfig(name=HF_MODEL_TYPES[model_type], path=spec, **options)
