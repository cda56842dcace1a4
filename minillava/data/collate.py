"""Batches: pad to the longest sample in the batch; group samples of similar length."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Sampler

from minillava.data.image_plan import ImagePlan
from minillava.data.tokenize import IGNORE_INDEX, SHARED_BLOCK

PAD_BLOCK = -1  # block id of padding: no token attends to it


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), 1 for real tokens
    labels: torch.Tensor | None  # (B, L), IGNORE_INDEX where nothing is learned
    pixel_values: torch.Tensor | None  # (total views in the batch, 3, H, W), image after image in sample order
    # Or the frozen encoder's outputs for those views, (total views, tokens, width), read from a feature cache.
    vision_features: torch.Tensor | None = None
    # Attention blocks (tokenize.EncodedSample.blocks; PAD_BLOCK on padding) and the positions that restart after
    # the shared prefix in each block; None when every sample is one causal sequence.
    block_ids: torch.Tensor | None = None  # (B, L)
    position_ids: torch.Tensor | None = None  # (B, L)
    # Preference batches: rows [0, pairs) are the chosen sides and rows [pairs, 2 * pairs) the rejected ones,
    # pair i in rows i and pairs + i. 0: not a preference batch.
    pairs: int = 0
    # Every image's plan (views, slots), in the order of its slots; None: each view is one image of the model's
    # fixed size.
    image_plans: list[ImagePlan] | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, input_ids=move(self.input_ids), attention_mask=move(self.attention_mask),
                       labels=move(self.labels), pixel_values=move(self.pixel_values),
                       vision_features=move(self.vision_features), block_ids=move(self.block_ids),
                       position_ids=move(self.position_ids))


def pad_sequences(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    out = torch.full((len(seqs), longest), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            if left:
                out[row, longest - len(seq):] = torch.as_tensor(seq)
            else:
                out[row, : len(seq)] = torch.as_tensor(seq)
    return out


def block_positions(blocks: Sequence[int]) -> list[int]:
    """Position ids for one sample's blocks: the shared prefix counts from 0, and each block from the prefix's
    length, as if its tokens came right after the prefix alone."""
    shared = sum(1 for b in blocks if b == SHARED_BLOCK)
    positions, seen = [], {}
    for b in blocks:
        if b == SHARED_BLOCK:
            positions.append(len(positions))
        else:
            seen[b] = seen.get(b, -1) + 1
            positions.append(shared + seen[b])
    return positions


def collate(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None, pad_token_id: int,
            pixel_values: Sequence[torch.Tensor], left_pad: bool = False,
            blocks: Sequence[Sequence[int] | None] | None = None,
            image_plans: Sequence[Sequence[ImagePlan]] | None = None) -> Batch:
    """Token lists of one batch -> padded tensors; `pixel_values` holds each sample's views, (n_i, 3, H, W).

    `blocks` (per sample, None for a plain causal sample) adds block ids and block-wise positions to the batch.
    `image_plans` (per sample, one plan per image) become the batch's plans, in slot order.
    """
    ids = pad_sequences(input_ids, pad_token_id, left=left_pad)
    mask = pad_sequences([[1] * len(s) for s in input_ids], 0, left=left_pad)
    lab = None if labels is None else pad_sequences(labels, IGNORE_INDEX, left=left_pad)
    images = [p for p in pixel_values if p is not None and len(p)]
    pixels = torch.cat(images) if images else None
    plans = None if image_plans is None else [plan for sample in image_plans for plan in sample]
    batch = Batch(ids, mask, lab, pixels, image_plans=plans)
    if blocks is not None and any(b is not None for b in blocks):
        filled = [list(b) if b is not None else [SHARED_BLOCK] * len(s) for b, s in zip(blocks, input_ids, strict=True)]
        batch.block_ids = pad_sequences(filled, PAD_BLOCK, left=left_pad)
        batch.position_ids = pad_sequences([block_positions(b) for b in filled], 0, left=left_pad)
    return batch


class LengthGroupedSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into mega-batches, sort each by length, batch, shuffle batches.

    Padding shrinks to the spread inside a mega-batch instead of the data set's global maximum.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_factor: int = 16,
                 drop_last: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = batch_size * mega_batch_factor
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.mega):
            mega = sorted(order[start : start + self.mega], key=lambda i: -self.lengths[i])
            batches += [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last or not rest else full + 1
