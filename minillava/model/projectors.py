"""Projectors: vision features (B, N, Dv) -> language-model embeddings (B, N', Dl).

Names: `linear`, `mlp{N}x_gelu` (LLaVA-1.5's `mlp2x_gelu` is the default) and `pixel_shuffle_mlp2x_gelu`,
which folds each 2x2 block of the patch grid into one token (576 -> 144 for CLIP-L/336, 729 -> 196 for SigLIP).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

MLP_PATTERN = re.compile(r"mlp(\d+)x_gelu")
PIXEL_SHUFFLE = "pixel_shuffle_mlp2x_gelu"


def mlp(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class Projector(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def num_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def output_grid(self, grid: tuple[int, int] | None) -> tuple[int, int] | None:
        """The rows, columns of the tokens it makes from tokens in `grid` (None: no grid)."""
        return grid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class PixelShuffleProjector(Projector):
    """Concatenates each 2x2 neighbourhood of the grid (zero-padding odd sides), then a 2-layer MLP."""

    scale = 2

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int] | None):
        if grid is None:
            raise ValueError(f"{PIXEL_SHUFFLE} needs a patch grid: use select='default' (drop the CLS token)")
        super().__init__(mlp(in_dim * self.scale**2, out_dim, depth=2))
        self.grid = grid

    def num_tokens(self, num_input_tokens: int) -> int:
        rows, cols = self.grid
        return math.ceil(rows / self.scale) * math.ceil(cols / self.scale)

    def output_grid(self, grid: tuple[int, int] | None) -> tuple[int, int] | None:
        rows, cols = self.grid
        return math.ceil(rows / self.scale), math.ceil(cols / self.scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, dim = features.shape
        rows, cols = self.grid
        s = self.scale
        x = features.view(batch, rows, cols, dim)
        x = F.pad(x, (0, 0, 0, -cols % s, 0, -rows % s))
        r, c = x.shape[1] // s, x.shape[2] // s
        x = x.view(batch, r, s, c, s, dim).permute(0, 1, 3, 2, 4, 5).reshape(batch, r * c, s * s * dim)
        return self.body(x)


def build_projector(name: str, in_dim: int, out_dim: int, grid: tuple[int, int] | None) -> Projector:
    if name == "linear":
        return Projector(nn.Linear(in_dim, out_dim))
    if match := MLP_PATTERN.fullmatch(name):
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"projector {name!r}: depth must be at least 1")
        return Projector(mlp(in_dim, out_dim, depth))
    if name == PIXEL_SHUFFLE:
        return PixelShuffleProjector(in_dim, out_dim, grid)
    raise ValueError(f"unknown projector {name!r}; choose linear, mlp{{N}}x_gelu (e.g. mlp2x_gelu) or {PIXEL_SHUFFLE}")
