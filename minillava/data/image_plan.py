"""Image plans: how each image becomes language-model tokens, decided per image before its pixels are needed.

A plan says how many views the vision encoder sees of an image (one view at the tower's size today; tiles and a
global view for AnyRes; frames for video) and how many `<image>` slots the image fills. Tokenization expands each
`<image>` to its own image's slots, the batch carries every image's plan, and the forward fills the slots with the
views' features, image after image. A plan may carry a layout: how its views' features become its tokens (AnyRes
re-assembles tiles into one grid and adds row ends); without one they are concatenated in view order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from minillava.data.conversation import ImageSource


class ViewLayout(Protocol):
    """How one image's projected view features become its slot embeddings (frozen and hashable: plans are compared)."""

    def num_tokens(self, tokens_per_view: int) -> int:
        """The embeddings `arrange` makes from the plan's views: what its slots must number."""
        ...

    def arrange(self, features: torch.Tensor, image_newline: torch.Tensor | None) -> torch.Tensor:
        """(views, tokens_per_view, width) -> (num_tokens, width); `image_newline`: the model's learned row end."""
        ...


@dataclass(frozen=True)
class ImagePlan:
    views: int  # encoder inputs made from the image, in the order their features fill its slots
    tokens: int  # `<image>` slots the image takes in the token ids
    layout: ViewLayout | None = None  # None: the views' features, concatenated, are the tokens

    def __post_init__(self) -> None:
        if self.views < 1 or self.tokens < 1:
            raise ValueError(f"an image plan needs at least one view and one token, not {self}")


class ImagePlanner(Protocol):
    """Decides each image's plan and makes the views it promises; the transform then sizes every view."""

    def plan(self, image: ImageSource) -> ImagePlan:
        """Called at tokenization, where images are not loaded yet."""
        ...

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        """The loaded image's `plan.views` views, in slot order."""
        ...


@dataclass(frozen=True)
class SingleViewPlanner:
    """A fixed-size model's plan for every image: the whole image as one view, filling `tokens` slots."""

    tokens: int

    def plan(self, image: ImageSource) -> ImagePlan:
        return ImagePlan(views=1, tokens=self.tokens)

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        return [image]
