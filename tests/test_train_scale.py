"""Training beyond the basic loop: the stage-1 feature cache, data parallelism, out-of-memory advice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import RECIPE, data_overrides, tiny_config, weights_of

from minillava.model import MiniLlava
from minillava.train.config import load_recipe
from minillava.train.features import FeatureCache, weights_digest
from minillava.train.loop import StageRun, TrainingStopped, train


def align_only(tmp_path, *overrides: str):
    config = tiny_config(tmp_path, *overrides)
    config.stages = config.stages[:1]
    return config


def test_feature_cache_trains_the_same_projector_and_reads_instead_of_encoding(tmp_path):
    # 48 samples in batches of 8 for 12 steps: two epochs, the second read from the cache.
    train(align_only(tmp_path / "a", "output_dir=" + str(tmp_path / "plain")))
    train(align_only(tmp_path / "a", "output_dir=" + str(tmp_path / "cached"), "stages.align.feature_cache=true",
                     "stages.align.feature_cache_dtype=float32"))
    ours = weights_of(tmp_path / "cached" / "align" / "final")
    theirs = weights_of(tmp_path / "plain" / "align" / "final")
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)
    cache = tmp_path / "cached" / "align" / "feature-cache"
    assert np.load(cache / "filled.npy").all()  # every train and validation image was encoded once
    assert np.load(cache / "features.npy").shape == (48 + 8, 16, 64)


def red_images(folder, n: int = 3) -> list:
    """n small images whose red value (40 * i) the fake encoder below turns into their features."""
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(paths[-1])
    return paths


def counting_encoder(calls: list):
    """An encoder of (2, 4) features filled with the image's red value, recording each call's batch size."""
    def encode(images):
        calls.append(len(images))
        return torch.stack([torch.full((2, 4), float(np.asarray(Image.open(p))[0, 0, 0])) for p in images])
    return encode


def test_feature_cache_encodes_each_image_once_and_notices_edits(tmp_path):
    paths, calls = red_images(tmp_path), []
    encode = counting_encoder(calls)
    cache = FeatureCache(tmp_path / "cache", paths, {"encoder": "x"}, (2, 4), "float32")
    first = cache.get(paths[:2], encode)
    again = cache.get(paths[:2], encode)
    assert torch.equal(first, again) and calls == [2] and cache.hits == 2
    reopened = FeatureCache(tmp_path / "cache", paths, {"encoder": "x"}, (2, 4), "float32")
    assert len(reopened) == 2 and torch.equal(reopened.get(paths[:1], encode), first[:1]) and calls == [2]
    Image.new("RGB", (8, 8), (200, 0, 0)).save(paths[0])  # an edited image is a new key: encoded again
    assert float(cache.get(paths[:1], encode)[0, 0, 0]) == 200.0 and calls == [2, 1]
    rebuilt = FeatureCache(tmp_path / "cache", paths, {"encoder": "y"}, (2, 4), "float32")
    assert len(rebuilt) == 0  # another encoder's cache is rebuilt, never misread


def test_a_new_feature_cache_takes_the_rows_an_earlier_one_of_the_same_encoder_holds(tmp_path):
    paths, calls = red_images(tmp_path), []
    encode = counting_encoder(calls)
    first = FeatureCache(tmp_path / "align", paths[:2], {"encoder": "x"}, (2, 4), "float32")
    expected = first.get(paths[:2], encode)
    other = FeatureCache(tmp_path / "other", paths[:1], {"encoder": "y"}, (2, 4), "float32")
    other.get(paths[:1], lambda images: torch.full((1, 2, 4), -1.0))  # another encoder's features: never taken
    calls.clear()
    seeded = FeatureCache(tmp_path / "instruct", paths, {"encoder": "x"}, (2, 4), "float32",
                          seeds=[tmp_path / "other", tmp_path / "missing", tmp_path / "align"])
    assert len(seeded) == 2
    assert torch.equal(seeded.get(paths[:2], encode), expected) and calls == []
    seeded.get(paths, encode)
    assert calls == [1] and seeded.misses == 1  # only the image the earlier stage never saw


def test_the_weights_digest_tells_encoders_with_equal_configurations_apart():
    module = torch.nn.Linear(3, 2)
    before = weights_digest(module)
    assert weights_digest(module) == before
    with torch.no_grad():
        module.weight[0, 0] += 1e-3
    assert weights_digest(module) != before


def test_feature_cache_needs_a_frozen_encoder(tmp_path):
    with pytest.raises(ValueError, match="feature_cache needs a frozen vision encoder"):
        tiny_config(tmp_path, "stages.align.feature_cache=true", "stages.align.vision.mode=full")


def test_two_gloo_processes_train_what_one_process_does_with_the_same_global_batch(tmp_path):
    common = [*data_overrides(tmp_path), "stages.instruct.language_model.lora_dropout=0.0",
              "stages.align.max_steps=4", "stages.instruct.max_steps=4", "device=cpu"]
    single = [sys.executable, "-m", "minillava", "train", "--config", str(RECIPE), f"output_dir={tmp_path / 'one'}",
              *common]
    subprocess.run(single, check=True, capture_output=True, cwd=tmp_path, timeout=300)
    double = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "minillava", "train", "--config", str(RECIPE), f"output_dir={tmp_path / 'two'}", *common,
              "stages.align.batch_size=4", "stages.instruct.batch_size=4"]
    result = subprocess.run(double, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for stage in ("align", "instruct"):
        ours, theirs = weights_of(tmp_path / "two" / stage / "final"), weights_of(tmp_path / "one" / stage / "final")
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=2e-5, msg=key)
    assert not list((tmp_path / "two").glob("*/checkpoints/.tmp-*"))


def metric(path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, path.read_text().splitlines()) if key in r]


def test_fsdp_over_two_gloo_processes_trains_what_one_process_does_and_resumes_exactly(tmp_path):
    # Half the instruct samples are text-only, so some ranks' micro-batches leave the projector unused while
    # others' use it (steps 7 and 8 end on one); a tiny max_grad_norm makes every step clip, which needs the norm
    # of the whole gradients.
    text = tmp_path / "text.json"
    turn = lambda i: [{"from": "human", "value": f"Count to {i}."}, {"from": "gpt", "value": str(i)}]  # noqa: E731
    text.write_text(json.dumps([{"id": f"t{i}", "conversations": turn(i)} for i in range(24)]))
    questions = tmp_path / "data" / "train" / "questions.json"
    common = [*data_overrides(tmp_path), f"stages.instruct.data=[{{path: '{questions}'}}, {{path: '{text}'}}]",
              "stages.instruct.group_by_length=false", "stages.instruct.language_model.lora_dropout=0.0",
              "stages.align.max_steps=2", "stages.instruct.max_steps=8", "stages.instruct.save_every=4",
              "stages.align.grad_accum=2", "stages.instruct.grad_accum=2",
              "stages.align.max_grad_norm=0.01", "stages.instruct.max_grad_norm=0.01", "device=cpu"]
    train(load_recipe(RECIPE, [f"output_dir={tmp_path / 'one'}", *common,
                               "stages.align.batch_size=4", "stages.instruct.batch_size=4"]))

    def fsdp(out: str, *extra: str) -> str:
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "minillava", "train", "--config", str(RECIPE), f"output_dir={tmp_path / out}", *common,
                "stages.align.batch_size=2", "stages.instruct.batch_size=2",
                "stages.align.parallel=fsdp", "stages.instruct.parallel=fsdp", *extra]
        result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    fsdp("two")
    for stage in ("align", "instruct"):
        ours, theirs = weights_of(tmp_path / "two" / stage / "final"), weights_of(tmp_path / "one" / stage / "final")
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=2e-5, msg=key)
    for key in ("grad_norm", "val_loss"):
        one, two = (metric(tmp_path / run / "instruct" / "metrics.jsonl", key) for run in ("one", "two"))
        assert len(one) > 0 and one == pytest.approx(two, rel=1e-4), key
    assert MiniLlava.from_pretrained(tmp_path / "two" / "instruct" / "final").config.stored == [
        "projector", "language_model"]
    assert not list((tmp_path / "two").glob("*/checkpoints/.tmp-*"))

    # Resume the instruct stage from its step-4 checkpoint (whole tensors, written by rank 0 alone).
    resumed = tmp_path / "resumed" / "instruct"
    shutil.copytree(tmp_path / "two", tmp_path / "resumed")
    for name in ("final", "checkpoints/step-00000008"):
        shutil.rmtree(resumed / name)
    (resumed / "DONE").unlink()
    assert "resumed from" in fsdp("resumed", "--resume")
    ours, theirs = weights_of(resumed / "final"), weights_of(tmp_path / "two" / "instruct" / "final")
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def test_parallel_is_ddp_or_fsdp(tmp_path):
    assert tiny_config(tmp_path).stages[0].parallel == "ddp"
    assert tiny_config(tmp_path, "stages.align.parallel=fsdp").stages[0].parallel == "fsdp"
    with pytest.raises(ValueError, match=r"parallel 'zero3'; choose one of \('ddp', 'fsdp'\)"):
        tiny_config(tmp_path, "stages.align.parallel=zero3")
    with pytest.raises(ValueError, match="evals .* do not run with parallel: fsdp"):
        tiny_config(tmp_path, "stages.align.parallel=fsdp", "stages.align.evals=[{task: vqa, path: q.json}]")


def test_out_of_memory_stops_with_remedies(tmp_path, monkeypatch):
    def fail(self):
        self._last_len = 99
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(StageRun, "_train_step", fail)
    with pytest.raises(TrainingStopped, match="stages.align.batch_size=4 stages.align.grad_accum=2") as error:
        train(align_only(tmp_path))
    assert "sequence length 99" in str(error.value) and "gradient_checkpointing" in str(error.value)


def test_bf16_keeps_frozen_weights_in_bf16_and_saves_fp32(tmp_path):
    config = tiny_config(tmp_path, "stages.align.precision=bf16", "stages.instruct.precision=bf16",
                         "stages.align.max_steps=2", "stages.instruct.max_steps=2")
    align, instruct = train(config)
    assert align.final_train_loss is not None and instruct.final_train_loss is not None
    saved = weights_of(tmp_path / "run" / "instruct" / "final")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_recipe_evaluations_join_the_metrics(tmp_path):
    val_questions = tmp_path / "data" / "val" / "questions.json"
    config = tiny_config(tmp_path, "stages.instruct.eval_every=6",
                         f"stages.instruct.evals=[{{task: vqa, path: '{val_questions}', limit: 4}}]")
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "instruct" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "questions-vqa/accuracy" in r]
    assert [r["step"] for r in scored] == [6, 12]
    assert all(0.0 <= r["questions-vqa/accuracy"] <= 1.0 for r in scored)
