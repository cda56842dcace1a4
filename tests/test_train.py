"""Training: stages as configuration, outputs, skipped samples, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from minillava.model import MiniLlava
from minillava.train.config import load_recipe
from minillava.train.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


def data_overrides(tmp_path: Path) -> list[str]:
    """The tiny recipe with its synthetic data generated under tmp_path."""
    data = tmp_path / "data"
    return [
        f"stages.align.data.0.path={data / 'train' / 'captions.json'}",
        f"stages.align.val_data.0.path={data / 'val' / 'captions.json'}",
        f"stages.instruct.data.0.path={data / 'train' / 'questions.json'}",
        f"stages.instruct.data.1.path={data / 'train' / 'captions.json'}",
        f"stages.instruct.val_data.0.path={data / 'val' / 'questions.json'}",
    ]


def tiny_config(tmp_path: Path, *overrides: str):
    return load_recipe(RECIPE, [f"output_dir={tmp_path / 'run'}", *data_overrides(tmp_path), *overrides])


def test_recipe_overrides_and_errors(tmp_path):
    config = tiny_config(tmp_path, "seed=7", "stages.instruct.language_model.lora_r=4", "stages.1.batch_size=2")
    assert config.seed == 7 and config.stages[1].language_model.lora_r == 4 and config.stages[1].batch_size == 2
    # YAML reads 1e-3 as a string; number fields take it as the number.
    config = tiny_config(tmp_path, "stages.align.lr=1e-3", "stages.instruct.language_model.lr=2e-4")
    assert config.stages[0].lr == 1e-3 and config.stages[1].language_model.lr == 2e-4
    with pytest.raises(ValueError, match=r"stages\[0\].lr: expected a number, got 'fast'"):
        tiny_config(tmp_path, "stages.align.lr=fast")
    with pytest.raises(ValueError, match="unknown keys \\['batch'\\]"):
        tiny_config(tmp_path, "stages.align.batch=3")
    with pytest.raises(ValueError, match="LoRA applies to the language model only"):
        tiny_config(tmp_path, "stages.align.projector.mode=lora")
    with pytest.raises(ValueError, match="no list item 'nope'"):
        tiny_config(tmp_path, "stages.nope.lr=1")


def test_a_checkpoint_is_written_once_per_step(tmp_path, monkeypatch):
    import minillava.train.loop as loop

    written = []

    def counting(directory, step, *args, **kwargs):
        written.append((Path(directory).name, step))
        return real(directory, step, *args, **kwargs)

    real = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", counting)
    # save_every divides the 12 steps of stage 1 (the last step's checkpoint is not written again at the end)
    # but not stage 2's, which still gets one at its end.
    train(tiny_config(tmp_path, "stages.align.save_every=6", "stages.instruct.save_every=5"))
    assert written == [("align", 6), ("align", 12), ("instruct", 5), ("instruct", 10), ("instruct", 12)]


def test_two_stages_train_what_they_say(tmp_path):
    config = tiny_config(tmp_path)
    align, instruct = train(config)
    run = tmp_path / "run"
    assert align.steps == 12 and instruct.steps == 12 and align.skipped["total"] == 0
    for stage in ("align", "instruct"):
        assert (run / stage / "loss.png").stat().st_size > 1000
        records = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert {"step", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"} <= set(records[0])
        assert any("val_loss" in r for r in records)
    assert json.loads((run / "align" / "final" / "config.json").read_text())["stored"] == ["projector"]
    assert json.loads((run / "instruct" / "final" / "config.json").read_text())["stored"] == [
        "projector", "language_model"]
    # Stage 1 changed only the projector; the frozen tower and LM are the pretrained ones.
    fresh = MiniLlava.from_components("tiny-clip", "tiny-llama", seed=0)
    aligned = MiniLlava.from_pretrained(run / "align" / "final")
    assert not torch.equal(fresh.projector.body[0].weight, aligned.projector.body[0].weight)
    for a, b in zip(fresh.vision.parameters(), aligned.vision.parameters(), strict=True):
        assert torch.equal(a, b)
    instructed = MiniLlava.from_pretrained(run / "instruct" / "final")
    q_fresh = fresh.language_model.model.layers[0].self_attn.q_proj.weight
    q_tuned = instructed.language_model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_fresh, q_tuned)  # LoRA was merged into the weights
    assert instructed.ask("Hi", max_new_tokens=2) is not None
    with pytest.raises(ValueError, match="already holds a run"):
        train(config)


def test_a_stage_learns_independent_turns_and_validates_them(tmp_path):
    """Every question of an image in one sample, each in its own attention block: the stage trains on them."""
    every = tmp_path / "data" / "train" / "all-questions.json"
    config = tiny_config(tmp_path, "stages.align.max_steps=2", "stages.instruct.max_steps=4",
                         f"stages.instruct.data.1.path={every}", "stages.instruct.data.1.turns=independent",
                         f"stages.instruct.val_data.0.path={every}", "stages.instruct.val_data.0.turns=independent",
                         "stages.instruct.attention=eager")
    _, instruct = train(config)
    assert instruct.steps == 4 and instruct.skipped["total"] == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "instruct" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    assert any(0 < r.get("val_loss", 0) < 20 for r in records)
    with pytest.raises(ValueError, match="turns 'parallel'; choose one of"):
        tiny_config(tmp_path, "stages.instruct.data.0.turns=parallel")


def test_a_stage_names_a_known_objective(tmp_path):
    with pytest.raises(ValueError, match="objective 'dpo-typo'; known: dpo, sft"):
        train(tiny_config(tmp_path, "stages.align.objective=dpo-typo"))


def test_bad_samples_are_skipped_and_counted(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    Image.new("RGB", (64, 64), "red").save(root / "red.png")
    (root / "broken.png").write_bytes(b"junk")
    turn = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    records = [{"id": f"ok{i}", "image": "red.png", "conversations": turn("<image>\nColour?", "red")} for i in range(6)]
    records += [
        {"id": "missing", "image": "gone.png", "conversations": turn("<image>\nColour?", "red")},
        {"id": "corrupt", "image": "broken.png", "conversations": turn("<image>\nColour?", "red")},
        {"id": "mismatch", "image": "red.png", "conversations": turn("<image><image>", "red")},
        {"id": "noreply", "conversations": [{"from": "human", "value": "hi"}]},
    ]
    (root / "data.json").write_text(json.dumps(records))
    config = tiny_config(tmp_path, f"stages.align.data=[{{path: {root / 'data.json'}}}]", "stages.align.val_data=[]",
                         "stages.align.max_steps=3")
    config.stages = config.stages[:1]
    (summary,) = train(config)
    skipped = summary.skipped
    assert skipped["total"] == 4
    assert skipped["by_reason"] == {"invalid record": 2, "image": 2}  # images are opened when batched
    assert any("corrupt" in e or "broken.png" in e for e in skipped["examples"])


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def run_cli(tmp_path: Path, out: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "minillava", "train", "--config", str(RECIPE), f"output_dir={out}",
            *data_overrides(tmp_path), *extra]
    return subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    reference = run_cli(tmp_path, "reference")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    rng = random.Random(os.getpid())
    # Checkpoint every step so the kill lands anywhere; the cadence must not change the result.
    killed = run_cli(tmp_path, "killed", "stages.align.save_every=1", "stages.instruct.save_every=1")
    deadline = time.time() + 120
    while not list((tmp_path / "killed").glob("*/checkpoints/step-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.0))
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "instruct" / "DONE").exists()
    resumed = run_cli(tmp_path, "killed", "stages.align.save_every=1", "stages.instruct.save_every=1", "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    for stage in ("align", "instruct"):
        ours = weights_of(tmp_path / "killed" / stage / "final")
        theirs = weights_of(tmp_path / "reference" / stage / "final")
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def test_sigterm_writes_a_checkpoint_and_stops_cleanly(tmp_path):
    proc = run_cli(tmp_path, "stopped", "stages.align.max_steps=400", "stages.align.save_every=0")
    deadline = time.time() + 120
    while "align step" not in (line := proc.stdout.readline()) and time.time() < deadline:
        assert line or proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, output
    assert "continue with --resume" in output
    (checkpoint,) = (tmp_path / "stopped" / "align" / "checkpoints").glob("step-*")
    assert (checkpoint / "COMPLETE").exists() and not (tmp_path / "stopped" / "align" / "DONE").exists()
