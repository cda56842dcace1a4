"""Training objectives by exact name: what a stage minimises, as a mean loss over the units it counts.

An objective turns a batch into (mean loss, units) through the model's forward; the training loop weighs each
micro-batch by its units, so a step's loss is the mean over all units of its micro-batches and ranks whatever the
objective. `sft` (next-token cross-entropy over the assistant replies' label tokens) is the one objective today;
a preference objective plugs in beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from minillava.data.collate import Batch
from minillava.data.tokenize import IGNORE_INDEX
from minillava.model.llava import ForwardOutput
from minillava.registry import Registry

Forward = Callable[[Batch], ForwardOutput]


@dataclass(frozen=True)
class Objective:
    name: str
    count: Callable[[Batch], int]  # the units a batch's loss is the mean over
    loss: Callable[[Forward, Batch], tuple[torch.Tensor, int]]  # (mean loss, units)


OBJECTIVES: Registry[Objective] = Registry("training objective")


def label_tokens(batch: Batch) -> int:
    """The label tokens a batch learns (each predicted from the position before it)."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def _sft_loss(forward: Forward, batch: Batch) -> tuple[torch.Tensor, int]:
    out = forward(batch)
    return out.loss, out.num_label_tokens


OBJECTIVES.register("sft")(Objective("sft", label_tokens, _sft_loss))
