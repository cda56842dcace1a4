"""Checkpoints: atomic, complete-or-invisible, prunable, and exact enough to resume training bitwise."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from minillava.train.checkpoint import (
    capture_rng,
    check_state_types,
    checkpoint_folder,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _steps(paths: list[Path]) -> list[int]:
    return [int(p.name.removeprefix("step-")) for p in paths]


def _save(run: Path, step: int, keep_last: int | None = 3) -> Path:
    weights = {"w": torch.full((4,), float(step))}
    return save_checkpoint(run, step, weights, {"step": step}, {"step": step}, keep_last=keep_last)


def test_round_trip_of_weights_state_and_meta(tmp_path):
    shared = torch.arange(6.0)
    weights = {"a": torch.randn(3, 2), "tied": shared, "tied_too": shared, "half": torch.ones(2, dtype=torch.bfloat16)}
    state = {"opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99),
                                                                                   "foreach": None}]},
             "data": {"epoch": 1, "index": 17, "order": [3, 1, 2], "done": False}, "name": "stage1",
             "ordered": OrderedDict(x=1), "dtype": torch.float16, "blob": b"\x00\x01", "nan": float("nan")}
    folder = save_checkpoint(tmp_path, 12, weights, state, {"step": 12, "config": {"lr": 1e-3}})
    assert folder == checkpoint_folder(tmp_path, 12) == tmp_path / "checkpoints" / "step-00000012"
    assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "meta.json", "state.pt", "weights.safetensors"]
    loaded_weights, loaded_state, meta = load_checkpoint(folder)
    assert weights.keys() == loaded_weights.keys()
    assert all(torch.equal(weights[k], loaded_weights[k]) for k in weights)
    assert loaded_state["data"] == state["data"] and loaded_state["opt"]["param_groups"] == state["opt"]["param_groups"]
    assert loaded_state["dtype"] is torch.float16 and loaded_state["blob"] == b"\x00\x01"
    assert meta == {"step": 12, "config": {"lr": 1e-3}}
    assert latest_checkpoint(tmp_path) == folder


def test_state_that_weights_only_load_would_refuse_is_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"state\['data'\]\['seen'\]: numpy.float64"):
        save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {"data": {"seen": np.float64(3)}}, {})
    with pytest.raises(TypeError, match=r"state\['rng'\]\[1\]: numpy.ndarray"):
        save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {"rng": ["MT", np.zeros(3)]}, {})
    assert not (tmp_path / "checkpoints").exists()


def _draw() -> tuple:
    return ([random.random() for _ in range(3)], random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.normal(), torch.rand(3), torch.randn(2))


def _assert_same_draws(a: tuple, b: tuple) -> None:
    assert a[:4] == b[:4]
    assert torch.equal(a[4], b[4]) and torch.equal(a[5], b[5])


def test_rng_capture_and_restore_repeat_the_same_numbers():
    random.gauss(0, 1), np.random.normal()  # leave cached gaussians in both, which the state must carry too
    rng = capture_rng()
    first = _draw()
    restore_rng(rng)
    _assert_same_draws(first, _draw())
    assert isinstance(rng["numpy"]["keys"], list) and isinstance(rng["python"]["state"], list)


def test_rng_state_survives_save_and_load(tmp_path):
    rng = capture_rng()
    check_state_types(rng)
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {"rng": rng}, {})
    first = _draw()
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path))
    restore_rng(state["rng"])
    _assert_same_draws(first, _draw())


def test_interrupted_saves_are_never_picked_up(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    root = tmp_path / "checkpoints"
    torn_tmp = root / ".tmp-step-00000003-k1ll3d"  # died while writing into its temporary folder
    torn_tmp.mkdir()
    (torn_tmp / "weights.safetensors").write_bytes(b"\x08\x00\x00")
    old = time.time() - 60
    os.utime(torn_tmp, (old, old))
    unmarked = root / "step-00000004"  # a step folder without COMPLETE (e.g. copied by hand, half-way)
    unmarked.mkdir()
    (unmarked / "weights.safetensors").write_bytes(b"junk")
    (root / "step-5-not-a-step").mkdir()

    assert _steps(list_checkpoints(tmp_path)) == [1, 2]
    assert latest_checkpoint(tmp_path) == checkpoint_folder(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        load_checkpoint(unmarked)

    _save(tmp_path, 3)
    assert not torn_tmp.exists()  # the next save clears what a killed writer left
    assert latest_checkpoint(tmp_path) == checkpoint_folder(tmp_path, 3)


def test_keep_last_prunes_oldest_complete_checkpoints(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, keep_last=2)
    assert _steps(list_checkpoints(tmp_path)) == [4, 5]
    _save(tmp_path, 2, keep_last=2)  # the checkpoint just written survives even when older than the rest
    assert _steps(list_checkpoints(tmp_path)) == [2, 4, 5]
    for step in range(6, 9):
        _save(tmp_path, step, keep_last=None)
    assert _steps(list_checkpoints(tmp_path)) == [2, 4, 5, 6, 7, 8]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 7, {"w": torch.zeros(2)}, {"v": 1}, {"v": 1})
    folder = save_checkpoint(tmp_path, 7, {"w": torch.ones(2)}, {"v": 2}, {"v": 2})
    weights, state, meta = load_checkpoint(folder)
    assert torch.equal(weights["w"], torch.ones(2)) and state["v"] == 2 and meta["v"] == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000007"]


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(8, 6)  # batches and dropout come from the global RNG, which the checkpoint carries
        loss = torch.nn.functional.dropout(model(x), p=0.2).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def test_adamw_resumed_from_a_checkpoint_matches_the_uninterrupted_run_bitwise(tmp_path):
    model, optimizer, scheduler = _fresh()
    _train(model, optimizer, scheduler, 3)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng()}
    folder = save_checkpoint(tmp_path, 3, dict(model.state_dict()), state, {"step": 3})
    _train(model, optimizer, scheduler, 4)  # the uninterrupted run goes on

    resumed, resumed_optimizer, resumed_scheduler = _fresh()
    weights, state, _ = load_checkpoint(folder)
    resumed.load_state_dict(weights)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed_scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    _train(resumed, resumed_optimizer, resumed_scheduler, 4)

    for (name, expected), actual in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


# Saves ~20 MB checkpoints as fast as it can, resuming from the latest one, until it is killed.
_SAVER = """
import sys, torch
from minillava.train.checkpoint import latest_checkpoint, save_checkpoint
run = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
latest = latest_checkpoint(run)
step = int(latest.name.removeprefix("step-")) + 1 if latest else 1
while True:
    weights = {"w": torch.full((5 * 1024 * 1024,), float(step)), "b": torch.full((3,), float(step))}
    save_checkpoint(run, step, weights, {"step": step, "t": torch.full((4,), step)}, {"step": step}, keep_last=2)
    print(step, flush=True)
    step += 1
"""


def _assert_latest_is_whole(run: Path) -> int:
    latest = latest_checkpoint(run)
    weights, state, meta = load_checkpoint(latest)
    step = meta["step"]
    assert latest == checkpoint_folder(run, step) and state["step"] == step
    assert torch.equal(state["t"], torch.full((4,), step))
    assert torch.equal(weights["w"], torch.full((5 * 1024 * 1024,), float(step)))
    return step


def test_sigkill_while_saving_never_leaves_a_broken_latest_checkpoint(tmp_path):
    rounds = 4
    delays = random.Random(1234)
    # Start every process up front so their torch imports overlap; each waits for "go" before touching the run.
    savers = [subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(rounds)]
    try:
        previous = 0
        for saver in savers:
            assert saver.stdout.readline().strip() == "ready"
            saver.stdin.write("go\n")
            saver.stdin.flush()
            first_saved = saver.stdout.readline().strip()
            assert first_saved == str(previous + 1), "a saver died before saving"
            time.sleep(delays.uniform(0.0, 0.4))
            saver.send_signal(signal.SIGKILL)
            assert saver.wait() == -signal.SIGKILL
            previous = _assert_latest_is_whole(tmp_path)
    finally:
        for saver in savers:
            if saver.poll() is None:
                saver.kill()
                saver.wait()
    _save(tmp_path, previous + 1, keep_last=2)  # a later save clears whatever the killed writers left
    assert _steps(list_checkpoints(tmp_path)) == [previous, previous + 1]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")] == []
