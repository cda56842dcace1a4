"""Crash-safe training checkpoints: atomic step folders that a run killed at any moment can resume from.

Layout under `run_dir/checkpoints/`:

    step-00001200/
        weights.safetensors   trainable tensors
        state.pt              optimizer, scheduler, scaler, RNG, data position (loaded with weights_only=True)
        meta.json             small JSON dict (step, config, ...)
        COMPLETE              written last; a folder without it is never loaded

A save writes a hidden `.tmp-step-...` sibling, fsyncs it and renames it into place, so a reader sees either
the whole checkpoint or none of it. A single writer per run directory is assumed: a save deletes every
`.tmp-*` folder older than itself as the leftover of a killed process.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
WEIGHTS = "weights.safetensors"
STATE = "state.pt"
META = "meta.json"
COMPLETE = "COMPLETE"
_STEP_FOLDER = re.compile(r"step-(\d{8,})")
_TMP_PREFIX = ".tmp-"

# Exactly the types torch.load(weights_only=True) rebuilds; subclasses (np.float64, namedtuples) are not.
_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)
_CONTAINERS = (list, tuple, set, dict, OrderedDict)


def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def _step_of(folder: Path) -> int | None:
    match = _STEP_FOLDER.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest step first; temporary and unfinished folders are left out."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(step, d) for d in root.iterdir()
             if (step := _step_of(d)) is not None and d.is_dir() and (d / COMPLETE).is_file()]
    return [d for _, d in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None when the run has none yet."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def check_state_types(obj: Any, where: str = "state") -> None:
    """Raise TypeError, naming the offending entry, for anything torch.load(weights_only=True) would refuse."""
    if isinstance(obj, torch.Tensor):
        return
    kind = type(obj)
    if kind in _SCALARS:
        return
    if kind not in _CONTAINERS:
        raise TypeError(f"{where}: {kind.__module__}.{kind.__qualname__} cannot be loaded with weights_only=True; "
                        "convert it to a tensor, a plain int/float/str/bool or a list/dict of them "
                        "(numpy: .tolist(); numpy scalar: .item())")
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_state_types(key, f"{where} key {key!r}")
            check_state_types(value, f"{where}[{key!r}]")
    else:
        for i, value in enumerate(obj):
            check_state_types(value, f"{where}[{i}]")


def capture_rng() -> dict:
    """Python, numpy, torch CPU (and CUDA when available) RNG states as weights_only-loadable plain values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    rng: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_internal), "gauss_next": py_gauss},
        "numpy": {"bit_generator": str(np_name), "keys": np_keys.tolist(), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(state: dict) -> None:
    """Put back every RNG state that `capture_rng` recorded, so the next draws repeat exactly."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["bit_generator"], np.array(npy["keys"], dtype=np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        warnings.warn("checkpoint holds CUDA RNG states but CUDA is unavailable; they are not restored", stacklevel=2)
        return
    devices = torch.cuda.device_count()
    if len(cuda_states) != devices:
        warnings.warn(f"checkpoint holds {len(cuda_states)} CUDA RNG states, this machine has {devices} devices; "
                      "restoring the common ones only", stacklevel=2)
    for device, device_state in enumerate(cuda_states[:devices]):
        torch.cuda.set_rng_state(device_state, device)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it; rename durability is the OS's there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safetensors_ready(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU tensors, cloning any that share storage (tied weights), which safetensors refuses."""
    ready, seen = {}, set()
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"weights[{name!r}]: expected a tensor, got {type(tensor).__name__}")
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        ready[name] = tensor
    return ready


def _write_folder(folder: Path, step: int, weights: dict[str, torch.Tensor], state: dict, meta: dict) -> None:
    save_file(_safetensors_ready(weights), folder / WEIGHTS)
    with open(folder / STATE, "wb") as f:
        torch.save(state, f)
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for name in (WEIGHTS, STATE, META):
        _fsync_file(folder / name)
    (folder / COMPLETE).write_text(f"{step}\n")  # last: its presence vouches for the files above
    _fsync_file(folder / COMPLETE)
    _fsync_dir(folder)


def _remove_stale_temporaries(root: Path, started: float, keep: Path) -> None:
    for d in root.iterdir():
        if d.name.startswith(_TMP_PREFIX) and d != keep and d.is_dir() and d.stat().st_mtime < started:
            shutil.rmtree(d, ignore_errors=True)


def _prune(run_dir: Path, keep_last: int, just_saved: Path) -> None:
    complete = list_checkpoints(run_dir)
    newest = set(complete[-keep_last:]) | {just_saved}  # the checkpoint just written always survives
    for d in complete:
        if d not in newest:
            shutil.rmtree(d, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, torch.Tensor], state: dict, meta: dict,
                    keep_last: int | None = 3) -> Path:
    """Atomically write checkpoint `step` of a run and return its folder; then keep only the newest `keep_last`.

    `state` may hold tensors, None, bool, int, float, complex, str, bytes, torch.dtype/device/Size, and
    list/tuple/set/dict/OrderedDict of them; anything else raises TypeError before anything is written.
    `meta` must be JSON-serialisable. One writer per run directory is assumed.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be None or >= 1, got {keep_last}")
    check_state_types(state)
    json.dumps(meta)  # fail before writing, not halfway through
    started = time.time()
    final = checkpoint_folder(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
    try:
        _write_folder(tmp, step, weights, state, meta)
        if final.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first; a crash in between leaves
            # the previous complete checkpoint as the latest, which is still consistent.
            old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-{final.name}-", dir=root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_temporaries(root, started, keep=tmp)
    if keep_last is not None:
        _prune(Path(run_dir), keep_last, final)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, state, meta) of a complete checkpoint folder; tensors come back on the CPU."""
    folder = Path(path)
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"{folder}: not a complete checkpoint (no {COMPLETE} marker); "
                                "use latest_checkpoint(run_dir) to find one that is")
    weights = load_file(folder / WEIGHTS)
    state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    meta = json.loads((folder / META).read_text())
    return weights, state, meta
