"""What every vision encoder adapter provides."""

from __future__ import annotations

import torch
from torch import nn

from minillava.data.transforms import ImageTransform


class VisionEncoder(nn.Module):
    """Maps pixel batches (B, 3, H, W) to patch features (B, num_tokens, hidden_size).

    Subclasses set `hidden_size`, `grid` (rows, cols of the selected patch tokens, or None when the tokens do
    not form a grid), `num_tokens` and `transform` (their own preprocessing); towers whose tokens are a patch grid
    after prefix tokens (CLS kept) set `patch_grid`, that grid.
    """

    hidden_size: int
    grid: tuple[int, int] | None
    patch_grid: tuple[int, int] | None = None
    num_tokens: int
    transform: ImageTransform

    def __init__(self) -> None:
        super().__init__()
        self.frozen = True

    def freeze(self, frozen: bool = True) -> VisionEncoder:
        self.frozen = frozen
        self.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> VisionEncoder:
        # A frozen tower stays in eval mode: batch-norm statistics and dropout must not change.
        return super().train(mode and not self.frozen)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.features(pixel_values)
        return self.features(pixel_values)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
