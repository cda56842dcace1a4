"""Data parallelism under torchrun: one process per device, NCCL on GPUs and gloo on CPUs.

Every rank builds the same global batches and takes its own slice of each; gradients are averaged by
DistributedDataParallel, or by FSDP when a stage says `parallel: fsdp` (see sharding.py); only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: list) -> list:
        """This rank's share of a global batch (strided, so length-sorted batches stay balanced)."""
        return items[self.rank :: self.size]

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums over all ranks (the values themselves on one process)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all(self, flag: bool) -> bool:
        return self.sum(0.0 if flag else 1.0)[0] == 0.0

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE_PROCESS = World()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_world(device: str) -> World:
    """Join the process group torchrun describes in the environment; a plain run is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local_rank)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
