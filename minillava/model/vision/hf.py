"""Hugging Face vision towers (CLIP, SigLIP, DINOv2) by local folder or hub id."""

from __future__ import annotations

import torch
from transformers import CLIPVisionModel, Dinov2Model, PreTrainedModel, SiglipVisionModel
from transformers.utils import cached_file

from minillava.data.transforms import ImageTransform
from minillava.model.config import VisionConfig
from minillava.model.embedded import resolve_tower
from minillava.model.vision.base import VisionEncoder
from minillava.model.vision.registry import VISION_ENCODERS

SELECT_STRATEGIES = ("default", "full")


class HFVisionTower(VisionEncoder):
    model_class: type[PreTrainedModel]
    num_prefix_tokens: int  # tokens before the patch grid (CLS), dropped by the "default" strategy

    def __init__(self, config: VisionConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        if config.path is None:
            raise ValueError(f"vision encoder {config.name!r} needs a path: a local folder or a hub id")
        if config.select not in SELECT_STRATEGIES:
            raise ValueError(f"vision select strategy {config.select!r}: choose one of {SELECT_STRATEGIES}")
        if config.image_size is not None:
            raise ValueError(f"{config.name} towers take the image size of their preprocessor; unset image_size")
        if config.color_cells:
            raise ValueError(f"{config.name}: color_cells are for CNN encoders; ViT towers keep colour in their "
                             f"patch embeddings (got {config.color_cells})")
        if config.position_channels:
            raise ValueError(f"{config.name} tokens carry the tower's own position embeddings; "
                             f"position_channels must be 0 (got {config.position_channels})")
        folder = resolve_tower(config.path)
        self.tower = self.model_class.from_pretrained(folder, dtype=dtype)
        self.layers = config.feature_layer if isinstance(config.feature_layer, list) else [config.feature_layer]
        num_states = self.tower.config.num_hidden_layers + 1  # embeddings + every layer
        for layer in self.layers:
            if not -num_states <= layer < num_states:
                raise ValueError(f"feature layer {layer} is out of range for a tower with {num_states} states")
        self.drop = self.num_prefix_tokens if config.select == "default" else 0
        preprocessor = cached_file(folder, "preprocessor_config.json")
        self.transform = ImageTransform.from_hf_preprocessor(preprocessor, resize_mode=config.image_aspect)
        patch = self.tower.config.patch_size
        rows, cols = self.transform.size[0] // patch, self.transform.size[1] // patch
        extra = self.num_prefix_tokens - self.drop
        self.grid = (rows, cols) if extra == 0 else None
        self.patch_grid = (rows, cols)
        self.num_tokens = rows * cols + extra
        self.hidden_size = self.tower.config.hidden_size * len(self.layers)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.tower.dtype)
        states = self.tower(pixel_values, output_hidden_states=True).hidden_states
        picked = torch.cat([states[layer] for layer in self.layers], dim=-1)
        return picked[:, self.drop :]


@VISION_ENCODERS.register("clip")
class CLIPTower(HFVisionTower):
    model_class = CLIPVisionModel
    num_prefix_tokens = 1


@VISION_ENCODERS.register("siglip")
class SiglipTower(HFVisionTower):
    model_class = SiglipVisionModel
    num_prefix_tokens = 0


@VISION_ENCODERS.register("dinov2")
class Dinov2Tower(HFVisionTower):
    model_class = Dinov2Model
    num_prefix_tokens = 1
