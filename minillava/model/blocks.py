"""The 4-D attention mask of a batch of attention blocks (data.tokenize: independent turns, packed samples)."""

from __future__ import annotations

import torch

from minillava.data.collate import PAD_BLOCK
from minillava.data.tokenize import SHARED_BLOCK

# Attention kernels of transformers that take a ready 4-D mask, and the kind of mask each adds to its scores.
BOOLEAN_MASK_KERNELS = ("sdpa",)
ADDITIVE_MASK_KERNELS = ("eager",)


def block_attention_mask(block_ids: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) block ids -> (B, 1, L, L) mask: a token sees earlier tokens of its own block and of the shared
    prefix, never another block or padding. Padding rows see themselves only, so no softmax row is empty."""
    length = block_ids.shape[1]
    query, key = block_ids[:, :, None], block_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=block_ids.device).tril()
    allowed = causal & (key != PAD_BLOCK) & ((key == SHARED_BLOCK) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool, device=block_ids.device)
    allowed = allowed[:, None]
    if implementation in BOOLEAN_MASK_KERNELS:
        return allowed
    if implementation in ADDITIVE_MASK_KERNELS:
        return torch.zeros(allowed.shape, dtype=dtype, device=block_ids.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    raise ValueError(f"attention blocks (independent turns) need the sdpa or eager attention kernel, "
                     f"not {implementation!r}")
