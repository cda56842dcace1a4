"""fp32 linear layers on CPU through oneDNN, for inference.

PyTorch sends a float32 `F.linear` on CPU to MKL's sgemm, which on some CPUs (measured: an AVX-512 AMD EPYC) runs
far below what the machine does; oneDNN, which PyTorch already uses for bf16, does the same product 1.7-2.3x
faster at every row count a language model sees (1 row per sequence when decoding, hundreds in a prompt).
`bench/generate_vs_hf.py` shows what this buys whole generation runs.

The oneDNN operator has no backward, so it is only used where nothing needs gradients and autocast is off
(autocast picks its own dtype); otherwise, and for other dtypes and devices, the layer is a plain `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_LINEAR = _onednn_linear_available()


def _plain(tensor: torch.Tensor | None) -> bool:
    """A dense float32 CPU tensor without gradients wanted (no DTensor, no other subclass)."""
    return tensor is None or (
        type(tensor) in (torch.Tensor, nn.Parameter) and tensor.device.type == "cpu"
        and tensor.dtype == torch.float32 and tensor.layout == torch.strided
        and not (tensor.requires_grad and torch.is_grad_enabled())
    )


def use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (ONEDNN_LINEAR and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and _plain(x) and _plain(weight) and _plain(bias))


class OneDNNLinear(nn.Linear):
    """`nn.Linear` with the same parameters and state; float32 inference on CPU runs through oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_onednn(x, self.weight, self.bias):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def use_onednn_linears(module: nn.Module) -> int:
    """Turn every plain `nn.Linear` inside `module` into a `OneDNNLinear` in place; returns how many.

    Only the class changes: parameters (tied ones included), hooks and state dict keys stay as they are, and
    libraries that look for `nn.Linear` (PEFT's LoRA, FSDP) still find one.
    """
    if not ONEDNN_LINEAR:
        return 0
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = OneDNNLinear
            count += 1
    return count
