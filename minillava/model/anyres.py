"""AnyRes on a model: the planner that fits its tower, and the learned row end saved with the projector."""

from __future__ import annotations

import torch
from torch import nn

from minillava.data.anyres import AnyResPlanner
from minillava.model.config import AnyResConfig
from minillava.model.projectors import Projector
from minillava.model.vision import VisionEncoder


def anyres_planner(config: AnyResConfig, vision: VisionEncoder, projector: Projector) -> AnyResPlanner:
    patches = vision.patch_grid or vision.grid
    if patches is None:
        raise ValueError(f"AnyRes re-assembles tiles from a patch grid, and the {type(vision).__name__} tokens "
                         "form none")
    if projector.num_tokens(vision.num_tokens) != vision.num_tokens:
        raise ValueError("AnyRes places every projected token of a tile in the grid: use a projector that keeps "
                         f"the token count (linear, mlpNx_gelu), not one that makes {vision.num_tokens} tokens "
                         f"{projector.num_tokens(vision.num_tokens)}")
    transform = vision.transform
    if transform.resize_mode == "crop" and transform.crop_shortest_edge not in (None, min(transform.size)):
        raise ValueError("AnyRes views are made at the tower's size, and this transform would crop them again "
                         f"(shortest edge {transform.crop_shortest_edge}, then {transform.size}): "
                         "use image_aspect pad or squash")
    # Tiles are padded with black, as transformers' and vLLM's LLaVA-NeXT processors do (the original repository
    # used the mean colour), so that an exported model sees the pixels it was trained on.
    return AnyResPlanner(tuple(tuple(p) for p in config.grid_pinpoints), transform.size, patches,
                         vision.num_tokens, config.image_newline, config.max_views, (0, 0, 0), transform.resample)


def add_image_newline(projector: Projector, width: int) -> None:
    """LLaVA-NeXT's learned row end, a projector parameter: trained, saved and loaded with the projector."""
    param = next(projector.parameters())
    newline = torch.randn(width, dtype=param.dtype, device=param.device) / width**0.5
    projector.register_parameter("image_newline", nn.Parameter(newline))
