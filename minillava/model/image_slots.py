"""The image-slot contract, checked before the encoder runs: a batch's `<image>` slots, its images' plans and the
encoder inputs (views) it holds all agree."""

from __future__ import annotations

from collections.abc import Sequence

from minillava.data.image_plan import ImagePlan


class ImageSlotError(ValueError):
    """The number of `<image>` slots in the token ids differs from the number of image features."""


def check_image_slots(num_slots: int, plans: Sequence[ImagePlan], num_views: int, tokens_per_view: int) -> None:
    """`tokens_per_view`: the features one encoded view gives after the projector."""
    planned = sum(plan.tokens for plan in plans)
    if num_slots != planned:
        counts = {plan.tokens for plan in plans}
        per_image = (f" x {plans[0].tokens} tokens per image" if len(counts) == 1
                     else f" of {', '.join(str(plan.tokens) for plan in plans)} tokens" if plans else "")
        raise ImageSlotError(f"{num_slots} image slots in the token ids but {len(plans)} images{per_image} = "
                             f"{planned} features")
    views = sum(plan.views for plan in plans)
    if num_views != views:
        raise ImageSlotError(f"the {len(plans)} images' plans take {views} views but the batch holds {num_views} "
                             "encoded or pixel views")
    for i, plan in enumerate(plans):
        if plan.layout is not None:
            arranged = plan.layout.num_tokens(tokens_per_view)
            if plan.tokens != arranged:
                raise ImageSlotError(f"image {i} of the batch: its plan fills {plan.tokens} slots but its layout "
                                     f"arranges its {plan.views} views into {arranged} features")
            continue
        # Without a layout the forward fills an image's slots with its views' features in order, nothing added.
        if plan.tokens != plan.views * tokens_per_view:
            raise ImageSlotError(f"image {i} of the batch: its plan fills {plan.tokens} slots but its {plan.views} "
                                 f"view(s) encode to {plan.views * tokens_per_view} features "
                                 f"({tokens_per_view} per view)")
