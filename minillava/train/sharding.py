"""FSDP (`parallel: fsdp`): each rank keeps 1/N of every parameter, gradient and optimizer state.

PyTorch's FSDP2 (`fully_shard`) makes each decoder layer of the language model one group, gathered whole just
before it runs and freed after, and the rest of the model (embeddings, head, projector, a tuned vision tower)
the root group. A frozen vision tower stays whole on every rank, outside FSDP: it needs no gradient exchange,
and the feature cache can then run it on its own. Checkpoints and `final/` hold whole tensors, as with DDP.

With grad_accum, gradients are reduce-scattered after every micro-batch, not only after the step's last as DDP's
no_sync does (FSDP's counterpart is set_requires_gradient_sync(False), deliberately not used): skipping would
keep whole, unsharded gradients between micro-batches (for a fully tuned LM, a full copy of its gradients on
every device); it saves little for the projector and LoRA, whose reductions are small next to gathering the
layers again for backward; and with bf16 gathering, a group that mixes accumulated fp32 gradients with fresh bf16
ones (a partly used component, e.g. a tuned vision tower whose last layer feeds nothing) fails FSDP's check that
a reduce-scatter has one dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from minillava.model import MiniLlava
from minillava.train.config import StageConfig, precision_dtype

# Whole tensors, gathered to rank 0's CPU memory (the other ranks get empty dicts).
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
# Whole tensors on every rank, each keeping its own shard of them.
_SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def decoder_layers(model: MiniLlava) -> nn.ModuleList:
    """The language model's blocks: the one ModuleList of its decoder (Llama `layers`, GPT-2 `h`, ...)."""
    decoder = model.language_model.get_decoder()
    lists = [m for m in decoder.children() if isinstance(m, nn.ModuleList)]
    if len(lists) != 1:
        raise ValueError(f"parallel: fsdp cannot find the layers of {type(decoder).__name__}: "
                         f"{len(lists)} ModuleLists among its children")
    return lists[0]


def shard(model: MiniLlava, stage: StageConfig, device: torch.device, world_size: int) -> None:
    """Shard `model` in place over all ranks (after tuning, the bf16 cast of frozen weights and gradient
    checkpointing were applied); its parameters become new DTensor objects, so build the optimizer after this.

    The model may still be on the CPU: each group moves to `device` as it is sharded, so no rank ever holds the
    whole language model on its device."""
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy()
    if stage.precision != "fp32":
        # Gather weights in the autocast dtype (frozen ones are stored in it already); reduce gradients in fp32.
        policy = MixedPrecisionPolicy(param_dtype=precision_dtype(stage.precision), reduce_dtype=torch.float32)
    ignored = set()
    if stage.vision.mode == "frozen":
        ignored = set(model.vision.parameters())
        model.vision.to(device)  # FSDP leaves ignored parameters where they are
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=ignored)
    # Every rank must run the same collectives in the same order, whether or not its batch has images. A
    # text-only batch leaves the projector without a gradient: a zero one keeps the reduce-scatters the same size
    # (DDP's find_unused_parameters). It also leaves the first layer's input (frozen embeddings) without
    # gradient, which would move that layer's reduce-scatter (and, with a frozen LM, the whole backward pass)
    # to a different place on that rank only: the embeddings' output always requires grad instead.
    model.set_reduce_scatter_unused_params(True)
    model.language_model.get_input_embeddings().register_forward_hook(_require_grad)


def _require_grad(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() else output


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """clip_grad_norm_ over plain or sharded gradients; with DTensor shards the norm is that of whole tensors."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def gather_trainable(model: FSDPModule) -> dict[str, torch.Tensor]:
    """The trainable parameters and the buffers, whole, on rank 0's CPU ({} elsewhere); every rank must call it."""
    return get_model_state_dict(model, options=_GATHER)


def gather_optimizer(model: FSDPModule, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state_dict as one process writes it (whole tensors, parameters numbered in group order),
    on rank 0 ({} elsewhere); every rank must call it."""
    state = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    return _renumber(state, {name: i for i, name in enumerate(_param_names(model, optimizer))}) if state else state


def load_trainable(model: FSDPModule, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                   optimizer_state: dict) -> None:
    """Put whole trainable tensors and a one-process optimizer state_dict back into the shards of every rank."""
    set_model_state_dict(model, weights, options=_SCATTER)
    names = dict(enumerate(_param_names(model, optimizer)))
    set_optimizer_state_dict(model, optimizer, _renumber(optimizer_state, names), options=_SCATTER)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {param: name for name, param in model.named_parameters()}
    return [names[param] for group in optimizer.param_groups for param in group["params"]]


def _renumber(state: dict, keys: dict) -> dict:
    """An optimizer state_dict with its parameter keys mapped (names to numbers, or back)."""
    return {"state": {keys[k]: v for k, v in state["state"].items()},
            "param_groups": [{**group, "params": [keys[k] for k in group["params"]]}
                             for group in state["param_groups"]]}
