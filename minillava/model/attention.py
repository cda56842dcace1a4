"""Attention for decoding on CPU: a step's single query against the cache as two small matmuls.

transformers' "sdpa" attention hands a decoding step's one query token to torch's flash-attention kernel, which on
CPU costs more than the attention layer's projections for short contexts (bench/generate_vs_hf.py --profile).
`minillava_sdpa` does the same computation as plain matmuls and a softmax when a CPU module in eval mode sees one
query token, and defers to transformers' own sdpa function otherwise (prefill, training, GPUs), so everything but
the CPU decode step runs exactly as before. Language models loaded with "sdpa" are switched to it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "minillava_sdpa"


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs) -> tuple[torch.Tensor, None]:
    """(batch, heads, q, dim) queries; (batch, kv heads, kv, dim) keys and values -> (batch, q, heads, dim)."""
    batch, heads, q_length, dim = query.shape
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None and kwargs.get("cache") is None
    if q_length != 1 or query.device.type != "cpu" or module.training or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kv_heads = key.shape[1]
    scale = dim**-0.5 if scaling is None else scaling
    # Query heads are grouped by the key/value head they share (transformers' repeat_kv order).
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scale  # (batch, kv heads, group, kv)
    if attention_mask is not None:  # (batch, 1, 1, kv): True where attended, or an additive float mask
        mask = attention_mask[..., -key.shape[2]:]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv heads, group, dim)
    return out.reshape(batch, 1, heads, dim), None


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_decode_attention(model) -> None:
    """Switch a transformers model that uses "sdpa" to `minillava_sdpa` (the same outputs, a faster CPU decode)."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
