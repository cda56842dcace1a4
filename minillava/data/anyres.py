"""AnyRes (LLaVA-NeXT): an image as a global view plus the tiles of a best-fit grid, each at the tower's size.

Planning reads the image's size only. Of the grid resolutions (`pinpoints`), it picks the one that keeps the most
of the image's pixels when the image is scaled to fit it and, among equals, wastes the least. The views are the
whole image resized to the tower's size, then the tiles (row after row) of the image resized to fit the chosen
resolution and padded to it. The layout re-assembles the tiles' patch features into one grid, crops the rows or
columns that only saw padding, and ends every row with the model's learned `image_newline`, after the global
view's features. The token count equals what transformers' LlavaNextProcessor inserts for the same image.
Optionally (`max_views`, LLaVA-OneVision's anyres_max_N) a grid of more patches than about N views hold shrinks,
bilinearly, to that budget, as LlavaOnevisionProcessor counts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from minillava.data.conversation import ImageSource
from minillava.data.image_plan import ImagePlan
from minillava.data.images import image_size

Resolution = tuple[int, int]  # (height, width)


def best_resolution(size: Resolution, pinpoints: Sequence[Resolution]) -> Resolution:
    """The pinpoint that keeps the most of the image's pixels once the image is scaled to fit it, then the one that
    wastes the least; the first of equals (LLaVA-NeXT's choice)."""
    height, width = size

    def fit(pinpoint: Resolution) -> tuple[int, int]:
        scale = min(pinpoint[1] / width, pinpoint[0] / height)
        kept = min(int(width * scale) * int(height * scale), width * height)  # upscaling adds no detail
        return kept, -(pinpoint[0] * pinpoint[1] - kept)

    height_best, width_best = max(pinpoints, key=fit)
    return height_best, width_best


def fitted_size(size: Resolution, target: Resolution) -> Resolution:
    """The image's size once resized to fit inside `target` with its aspect ratio kept (the side that limits the
    scale fills the target exactly)."""
    height, width = size
    scale_h, scale_w = target[0] / height, target[1] / width
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target[0]), target[1]
    return target[0], min(math.ceil(width * scale_h), target[1])


def unpadded_grid(size: Resolution, grid: Resolution) -> tuple[slice, slice]:
    """The rows and columns of a padded feature grid that cover the image of `size` (centred, as it was padded)."""
    height, width = size
    rows, cols = grid
    if width / height > cols / rows:  # wider than the grid: padding above and below
        pad = (rows - int(round(height * (cols / width), 7))) // 2
        return slice(pad, rows - pad), slice(0, cols)
    pad = (cols - int(round(width * (rows / height), 7))) // 2
    return slice(0, rows), slice(pad, cols - pad)


@dataclass(frozen=True)
class TileGridLayout:
    """One image's AnyRes arrangement: view 0 is the global view, views 1.. the tiles, row after row."""

    tiles: Resolution  # tile rows, tile columns of the chosen resolution
    patches: Resolution  # patch rows, columns of one view
    image_size: Resolution  # the image's (height, width): where the padding is
    newline: bool = True  # a learned row end after every grid row
    max_views: int | None = None  # token reduction: the grid shrinks to about this many views' patches

    @property
    def grid(self) -> Resolution:
        return self.tiles[0] * self.patches[0], self.tiles[1] * self.patches[1]

    @property
    def kept(self) -> tuple[slice, slice]:
        return unpadded_grid(self.image_size, self.grid)

    @property
    def arranged_grid(self) -> Resolution:
        """Rows, columns of the grid after the padding's crop and any reduction."""
        rows, cols = (kept.stop - kept.start for kept in self.kept)
        if self.max_views is None:
            return rows, cols
        ratio = math.sqrt(rows * cols / (self.max_views * self.patches[0] * self.patches[1]))
        # Within 10 % of the budget the grid stays as it is (LLaVA-OneVision's threshold).
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    def num_tokens(self, tokens_per_view: int) -> int:
        rows, cols = self.arranged_grid
        return tokens_per_view + rows * cols + (rows if self.newline else 0)

    def arrange(self, features: torch.Tensor, image_newline: torch.Tensor | None) -> torch.Tensor:
        tile_rows, tile_cols = self.tiles
        rows, cols = self.patches
        width = features.shape[-1]
        if features.shape[0] != 1 + tile_rows * tile_cols:
            raise ValueError(f"an AnyRes image of {tile_rows}x{tile_cols} tiles needs {1 + tile_rows * tile_cols} "
                             f"views, got {features.shape[0]}")
        # A tile's prefix tokens (CLS, kept by select "full") have no place in the grid; the global view keeps them.
        tiles = features[1:, features.shape[1] - rows * cols:]
        grid = tiles.reshape(tile_rows, tile_cols, rows, cols, width).permute(0, 2, 1, 3, 4)
        grid = grid.reshape(tile_rows * rows, tile_cols * cols, width)[self.kept]
        if self.arranged_grid != grid.shape[:2]:
            grid = F.interpolate(grid.permute(2, 0, 1)[None], self.arranged_grid, mode="bilinear")[0].permute(1, 2, 0)
        if self.newline:
            if image_newline is None:
                raise ValueError("this AnyRes layout ends rows with image_newline, and the model has none")
            grid = torch.cat([grid, image_newline.to(grid.dtype).expand(grid.shape[0], 1, width)], dim=1)
        return torch.cat([features[0], grid.flatten(0, 1)])


@dataclass(frozen=True)
class AnyResPlanner:
    """Plans each image as a global view plus the tiles of its best-fit resolution (see the module docstring)."""

    pinpoints: tuple[Resolution, ...]  # grid resolutions (height, width), multiples of view_size
    view_size: Resolution  # the tower's input (height, width)
    patches: Resolution  # patch rows, columns of one view
    tokens_per_view: int  # projected features of one view (the patch grid plus any prefix tokens)
    newline: bool = True
    max_views: int | None = None  # token reduction (see TileGridLayout)
    background: tuple[int, int, int] = (0, 0, 0)  # the padding's colour
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self) -> None:
        object.__setattr__(self, "pinpoints", tuple((int(h), int(w)) for h, w in self.pinpoints))
        if not self.pinpoints:
            raise ValueError("AnyRes needs at least one grid resolution")
        for height, width in self.pinpoints:
            if height < 1 or width < 1 or height % self.view_size[0] or width % self.view_size[1]:
                raise ValueError(f"AnyRes grid resolution {height}x{width} (height x width) is not a multiple of the "
                                 f"tower's {self.view_size[0]}x{self.view_size[1]}")
        if self.tokens_per_view < self.patches[0] * self.patches[1]:
            raise ValueError(f"{self.tokens_per_view} tokens per view cannot hold a {self.patches} patch grid")

    def plan(self, image: ImageSource) -> ImagePlan:
        width, height = image_size(image)
        best = best_resolution((height, width), self.pinpoints)
        tiles = (best[0] // self.view_size[0], best[1] // self.view_size[1])
        layout = TileGridLayout(tiles, self.patches, (height, width), self.newline, self.max_views)
        return ImagePlan(views=1 + tiles[0] * tiles[1], tokens=layout.num_tokens(self.tokens_per_view),
                         layout=layout)

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        layout = plan.layout
        if not isinstance(layout, TileGridLayout):
            raise ValueError(f"an AnyRes planner makes views for its own plans, not {plan}")
        view_h, view_w = self.view_size
        target = (layout.tiles[0] * view_h, layout.tiles[1] * view_w)
        # From the planned size, not the loaded one: a JPEG may decode reduced, and the layout's crop assumes this fit.
        fit_h, fit_w = fitted_size(layout.image_size, target)
        canvas = Image.new("RGB", (target[1], target[0]), self.background)
        canvas.paste(image.resize((fit_w, fit_h), self.resample), ((target[1] - fit_w) // 2, (target[0] - fit_h) // 2))
        tiles = [canvas.crop((col * view_w, row * view_h, (col + 1) * view_w, (row + 1) * view_h))
                 for row in range(layout.tiles[0]) for col in range(layout.tiles[1])]
        return [image.resize((view_w, view_h), self.resample), *tiles]
