"""Reading checkpoints safely (safetensors, or .bin through torch.load(weights_only=True)); writing shards."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD = "5GB"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?B)", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(size: str | int) -> int:
    """"5GB", "200MB", "64KB" or a byte count -> bytes."""
    if isinstance(size, int):
        return size
    match = _SIZE.fullmatch(size.strip())
    if not match:
        raise ValueError(f"size {size!r}: write a number and a unit, e.g. 5GB, 500MB or 64KB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def weight_files(folder: Path, names: Iterable[str] = ("model.safetensors", "pytorch_model.bin")) -> list[Path]:
    """The weight files of a checkpoint folder: a single file, or the shards its index names (safetensors first)."""
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / (f"{name}.index.json")
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [folder / shard for shard in dict.fromkeys(weight_map.values())]
    return []


def load_tensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the files; .bin files are unpickled with weights_only=True (plain tensors only)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                part = {key: f.get_tensor(key) for key in f.keys()}
        elif path.suffix == ".bin":
            try:
                part = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # torch raises UnpicklingError and others; the reason matters, not the type
                raise ValueError(f"{path}: not plain tensors (weights_only loading refused it): {error}") from None
            if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise ValueError(f"{path}: expected a dict of tensors")
        else:
            raise ValueError(f"{path}: unknown weight file type (expected .safetensors or .bin)")
        clash = part.keys() & tensors.keys()
        if clash:
            raise ValueError(f"{path}: tensors also found in another shard: {sorted(clash)[:3]}")
        tensors.update(part)
    return tensors


def save_sharded(tensors: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int = DEFAULT_MAX_SHARD
                 ) -> list[Path]:
    """Write model.safetensors, or model-0000k-of-0000n.safetensors shards plus an index past max_shard_size."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        path = folder / "model.safetensors"
        save_file(shards[0], str(path), metadata=metadata)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=metadata)
        paths.append(path)
        weight_map.update(dict.fromkeys(shard, path.name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return paths
