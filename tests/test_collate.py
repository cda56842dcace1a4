"""Batches pad to the longest sample only; the length-grouped sampler keeps batches of similar length."""

from __future__ import annotations

import torch

from minillava.data.collate import LengthGroupedSampler, collate
from minillava.data.tokenize import IGNORE_INDEX


def test_collate_pads_right_for_training_and_left_for_generation():
    ids, labels = [[5, 6, 7], [8]], [[IGNORE_INDEX, 6, 7], [8]]
    pixels = [torch.zeros(2, 3, 4, 4), None]
    batch = collate(ids, labels, pad_token_id=0, pixel_values=pixels)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.pixel_values.shape == (2, 3, 4, 4)
    left = collate(ids, None, pad_token_id=0, pixel_values=[None, None], left_pad=True)
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and left.labels is None and left.pixel_values is None


def test_length_grouped_batches_cover_everything_once_and_are_tight():
    lengths = [(i * 37) % 200 + 1 for i in range(500)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(500))
    grouped_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    random_batches = [list(range(s, min(s + 8, 500))) for s in range(0, 500, 8)]
    random_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in random_batches)
    assert grouped_padding < random_padding / 3


def test_length_grouped_order_is_deterministic_per_seed_and_epoch():
    sampler = LengthGroupedSampler(list(range(100)), batch_size=4, seed=7)
    first = list(sampler)
    assert first == list(LengthGroupedSampler(list(range(100)), batch_size=4, seed=7))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(list(LengthGroupedSampler(list(range(10)), batch_size=4, drop_last=True))) == 2
