"""A KV cache that writes each step's keys and values into buffers allocated once per generation.

transformers' DynamicCache concatenates every step, copying the whole cache of every layer each time: at batch 8
that was 30 % of a decode step on CPU (bench/generate_vs_hf.py --profile). Generation knows its longest length
(prompt + max_new_tokens), so the buffers are sized for it once and the cache hands out views of the filled part.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values: views of the first `length` positions of buffers of `capacity` positions.

    A sequence that outgrows the capacity still works: the buffers double (one copy), as a list would.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._key_buffer = self._buffer(key_states, self.capacity)
        self._value_buffer = self._buffer(value_states, self.capacity)
        self.keys, self.values = self._key_buffer[:, :, :0], self._value_buffer[:, :, :0]
        self.is_initialized = True

    @staticmethod
    def _buffer(like: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, heads, _, width = like.shape
        return like.new_empty(batch, heads, capacity, width)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        self._key_buffer[:, :, start:end] = key_states
        self._value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        keys, values = self._buffer(self.keys, capacity), self._buffer(self.values, capacity)
        length = self.keys.shape[-2]
        keys[:, :, :length], values[:, :, :length] = self.keys, self.values
        self._key_buffer, self._value_buffer, self.capacity = keys, values, capacity


class PreallocatedCache(DynamicCache):
    """A DynamicCache whose layers are PreallocatedLayers of `capacity` positions (per sequence in the batch)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.layer_class_to_replicate = partial(PreallocatedLayer, capacity)
