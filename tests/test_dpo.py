"""Preference tuning: the pair format and its checks, reply-only log-probabilities, the DPO loss by hand, a dpo
stage against a frozen reference, and exact resume after SIGKILL."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from minillava.data.conversation import Conversation, Turn
from minillava.data.formats import load_conversations
from minillava.data.synth import HALLUCINATIONS, synthesize_shapes
from minillava.data.tokenize import IGNORE_INDEX
from minillava.data.validate import check_file
from minillava.model import MiniLlava
from minillava.train.config import Preference, StageConfig, TrainConfig
from minillava.train.loop import StageRun, train
from minillava.train.metrics import records
from minillava.train.objectives import build_objective, preference_loss


@pytest.fixture(scope="module")
def tiny_model(tiny_towers, tiny_llms):
    return MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]).eval()


def _image(folder: Path, name: str = "red.png") -> str:
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / name)
    return name


def test_preference_pairs_parse_in_each_layout(tmp_path):
    image = _image(tmp_path)
    pairs = [
        # minillava's own: a prompt string, the two replies as strings
        {"id": "own", "image": image, "prompt": "<image>\nIs there a cat?", "chosen": "no", "rejected": "yes"},
        # LLaMA-Factory's ShareGPT ranking data: conversations up to the user turn, replies as messages
        {"id": "lf", "images": [image], "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "And the shape?"}],
         "chosen": {"from": "gpt", "value": "a square"}, "rejected": {"from": "gpt", "value": "a circle"}},
        # TRL's: the prompt without the image marker, replies as a list of one assistant message
        {"id": "trl", "images": [image], "prompt": "Describe it.",
         "chosen": [{"role": "assistant", "content": "A red square."}],
         "rejected": [{"role": "assistant", "content": "A blue cat."}]},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    conversations, errors = load_conversations(tmp_path / "pairs.jsonl")
    assert not errors
    own, lf, trl = conversations
    assert [t.role for t in own.turns] == ["user", "assistant"] and own.turns[-1].content == "no"
    assert own.rejected == "yes" and own.images == [(tmp_path / image).resolve()]
    assert [t.role for t in lf.turns] == ["user", "assistant", "user", "assistant"]
    assert (lf.turns[-1].content, lf.rejected) == ("a square", "a circle")
    assert trl.turns[0].content == "<image>\nDescribe it." and trl.rejected == "A blue cat."


def test_data_check_names_each_bad_pair_and_why(tmp_path):
    image = _image(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"junk")
    good = {"image": image, "prompt": "<image>\nIs there a cat?", "chosen": "no", "rejected": "yes"}
    pairs = [
        {"id": "ok", **good},
        {"id": "one-sided", "image": image, "prompt": "<image>\nIs there a cat?", "chosen": "no"},
        {"id": "same", **good, "rejected": "no "},
        {"id": "empty", **good, "chosen": " "},
        {"id": "ends-with-reply", "image": image, "chosen": "no", "rejected": "yes", "conversations": [
            {"from": "human", "value": "<image>\nCat?"}, {"from": "gpt", "value": "no"}]},
        {"id": "bad-image", **good, "image": "broken.png"},
        {"id": "no-prompt", "image": image, "chosen": "no", "rejected": "yes"},
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    report = check_file(tmp_path / "pairs.json")
    reasons = {e.sample_id: e.reason for e in report.errors}
    assert report.total == 7 and "ok" not in reasons
    assert "missing 'rejected'" in reasons["one-sided"]
    assert "the same reply" in reasons["same"]
    assert "'chosen' is empty" in reasons["empty"]
    assert "must end with a user turn" in reasons["ends-with-reply"]
    assert "broken.png" in reasons["bad-image"]
    assert "needs a 'prompt'" in reasons["no-prompt"]
    assert all(e.source == str(tmp_path / "pairs.json") and e.index is not None for e in report.errors)


def test_a_pair_is_two_sequences_that_label_only_their_last_reply(tiny_model, images):
    conversation = Conversation([Turn("user", "<image>\nWhat colour?"), Turn("assistant", "red"),
                                 Turn("user", "And the shape?"), Turn("assistant", "a square")],
                                images=[images[0]], rejected="a round circle")
    pair = tiny_model.encoder.encode_preference(conversation)
    prompt = tiny_model.encoder.encode(Conversation(conversation.turns[:-1], [images[0]]), add_generation_prompt=True)
    tokenizer = tiny_model.tokenizer
    for side, reply in ((pair.chosen, "a square"), (pair.rejected, "a round circle")):
        n = len(prompt.input_ids)
        assert side.input_ids[:n] == prompt.input_ids  # the same prompt, earlier reply "red" included
        assert all(label == IGNORE_INDEX for label in side.labels[:n])  # ... and none of it learned
        learned = [t for t in side.labels if t != IGNORE_INDEX]
        assert tokenizer.decode(learned[:-1]) == reply and learned[-1] == tiny_model.encoder.end_of_turn_id
    assert pair.length == max(len(pair.chosen.input_ids), len(pair.rejected.input_ids))
    with pytest.raises(ValueError, match="not a preference pair"):
        tiny_model.encoder.encode_preference(Conversation(conversation.turns, [images[0]]))


def test_sequence_logps_sum_each_rows_label_token_log_probs(tiny_model, images):
    conversations = [Conversation([Turn("user", "<image>\nWhat is it?"), Turn("assistant", answer)], images=[im])
                     for answer, im in (("a red box", images[0]), ("green", images[1]))]
    batch = tiny_model.prepare(conversations)
    with torch.no_grad():
        out = tiny_model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                         return_logits=True, sequence_logps=True)
        plain = tiny_model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    logps = out.logits.float().log_softmax(-1)[:, :-1]
    targets = batch.labels[:, 1:]
    for row in range(2):
        learned = targets[row] != IGNORE_INDEX
        expected = logps[row][learned].gather(-1, targets[row][learned][:, None]).sum()
        torch.testing.assert_close(out.sequence_logps[row], expected, rtol=1e-5, atol=1e-5)
        assert out.sequence_tokens[row] == int(learned.sum())
    torch.testing.assert_close(out.loss, plain.loss, rtol=1e-6, atol=1e-6)  # the same mean cross-entropy


def test_the_dpo_loss_equals_a_hand_computation():
    policy_c, policy_r = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    ref_c, ref_r = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.5])
    # pair 0: h = (-1 + 2) - (-3 + 2.5) = 1.5; pair 1: h = (-4 + 3) - (-2 + 2.5) = -1.5
    losses, rewards = preference_loss(policy_c, policy_r, ref_c, ref_r, Preference(beta=0.1))
    expected = [math.log(1 + math.exp(-0.15)), math.log(1 + math.exp(0.15))]
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rewards["chosen"], torch.tensor([0.1, -0.1]))
    torch.testing.assert_close(rewards["rejected"], torch.tensor([-0.05, 0.05]))
    smoothed, _ = preference_loss(policy_c, policy_r, ref_c, ref_r, Preference(beta=0.1, label_smoothing=0.2))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    hand = -0.8 * math.log(sig(0.15)) - 0.2 * math.log(sig(-0.15))
    assert smoothed[0].item() == pytest.approx(hand, rel=1e-6)
    ipo, _ = preference_loss(policy_c, policy_r, ref_c, ref_r, Preference(beta=0.5, loss="ipo"))
    torch.testing.assert_close(ipo, torch.tensor([(1.5 - 1.0) ** 2, (-1.5 - 1.0) ** 2]))


def test_dpo_against_itself_starts_at_log_2_and_moves_only_the_policy(tiny_model, images, tmp_path):
    image = _image(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps([
        {"id": str(i), "image": image, "prompt": "<image>\nIs it red?", "chosen": c, "rejected": r}
        for i, (c, r) in enumerate((("yes", "no"), ("A red square.", "A blue star.")))]))
    conversations, _ = load_conversations(tmp_path / "p.json")
    pairs = [tiny_model.encoder.encode_preference(c) for c in conversations]
    from minillava.data.collate import collate

    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    pixels = [tiny_model.pixel_values(p.images) for p in pairs] * 2
    batch = collate([r.input_ids for r in rows], [r.labels for r in rows], tiny_model.tokenizer.pad_token_id, pixels)
    batch.pairs = 2
    objective = build_objective(StageConfig(objective="dpo"))
    assert objective.pairs and objective.reference and objective.count(batch) == 2
    reference = copy.deepcopy(tiny_model).requires_grad_(False)

    def forward(model):
        return lambda b, sequence_logps=False: model(b.input_ids, b.attention_mask, b.labels, b.pixel_values,
                                                     sequence_logps=sequence_logps)

    out = objective.loss(forward(tiny_model), batch, forward(reference))
    assert out.units == 2
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert out.stats["reward_margin"] == pytest.approx(0, abs=1e-5) and out.stats["reward_accuracy"] == 0
    rpo = build_objective(StageConfig(objective="dpo", preference=Preference(sft_weight=0.5)))
    with torch.no_grad():
        mixed = rpo.loss(forward(tiny_model), batch, forward(reference))
    assert mixed.loss.item() == pytest.approx(math.log(2) + 0.5 * out.stats["nll_chosen"], rel=1e-5)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.language_model.parameters())
    assert all(p.grad is None for p in reference.parameters())
    tiny_model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="needs preference batches"):
        objective.loss(forward(tiny_model), tiny_model.prepare(conversations), forward(reference))


def test_synthetic_pairs_prefer_the_scene_over_a_hallucination(tmp_path):
    synthesize_shapes(tmp_path, 30, seed=4, image_size=64, preferences=True, short_answer_suffix=False)
    pairs = json.loads((tmp_path / "preferences.json").read_text())
    scenes = {s["image"]: s for s in json.loads((tmp_path / "scenes.json").read_text())}
    kinds = {p["kind"] for p in pairs}
    assert kinds == {"yesno", "caption", "color", "count"}
    yesno = [p for p in pairs if p["kind"] == "yesno"]
    assert sum(p["chosen"] == "yes" for p in yesno) == sum(p["chosen"] == "no" for p in yesno)
    for p in pairs:
        assert p["chosen"] != p["rejected"] and p["prompt"].startswith("<image>\n")
        shapes = scenes[p["image"]]["shapes"]
        if p["kind"] == "count":
            assert p["chosen"] == str(len(shapes)) and abs(int(p["rejected"]) - len(shapes)) == 1
        if p["kind"] == "color":
            assert p["chosen"] in {s["color"] for s in shapes}
        if p["kind"] == "caption":
            assert p["hallucination"] in HALLUCINATIONS
            named = p["chosen"].lower()
            assert all(s["color"] in named and s["shape"] in named for s in shapes)
    assert not check_file(tmp_path / "preferences.json").errors
    # Without the flag nothing else changes: the other files are byte-identical.
    synthesize_shapes(tmp_path / "plain", 30, seed=4, image_size=64, short_answer_suffix=False)
    assert not (tmp_path / "plain" / "preferences.json").exists()
    for name in ("shapes.json", "all-questions.json", "scenes.json"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def dpo_recipe(tmp_path: Path, out: str = "run", steps: int = 6) -> dict:
    """A tiny model's stage 1, then a dpo stage on synthetic preference pairs."""
    data = tmp_path / "data"
    synth = {"kind": "shapes", "n": 24, "seed": 0, "image_size": 64, "preferences": True}
    return {
        "output_dir": str(tmp_path / out), "seed": 0,
        "model": {"vision": "tiny-clip", "llm": "tiny-llama"},
        "stages": [
            {"name": "align", "data": [{"path": str(data / "train" / "captions.json"), "format": "llava-pretrain",
                                        "synth": synth}],
             "max_steps": 2, "batch_size": 4, "lr": 1e-3},
            {"name": "dpo", "objective": "dpo", "preference": {"beta": 0.5},
             "data": [{"path": str(data / "train" / "preferences.json"), "synth": synth}],
             "val_data": [{"path": str(data / "val" / "preferences.json"),
                           "synth": {**synth, "n": 4, "seed": 1}}],
             "projector": {"mode": "full", "lr": 1e-3},
             "language_model": {"mode": "lora", "lora_r": 4, "lora_alpha": 8, "lora_targets": "attention"},
             "lr": 1e-3, "batch_size": 4, "max_steps": steps, "log_every": 1, "save_every": 2},
        ],
    }


def test_a_dpo_stage_trains_against_a_frozen_reference(tmp_path):
    config = TrainConfig.from_dict(dpo_recipe(tmp_path))
    (align,) = train(TrainConfig.from_dict({**dpo_recipe(tmp_path), "stages": dpo_recipe(tmp_path)["stages"][:1]}))
    run = StageRun(config, 1, tmp_path / "run" / "dpo", Path(align.final_dir), resume=False)
    before = {k: v.clone() for k, v in run.reference.state_dict().items()}
    start = MiniLlava.from_pretrained(align.final_dir).state_dict()
    assert all(not p.requires_grad for p in run.reference.parameters())
    summary = run.run()
    after = run.reference.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the reference did not move
    assert all(torch.equal(start[k].to(after[k].dtype), after[k]) for k in after)  # ... and is the start
    assert summary.steps == 6 and summary.skipped["total"] == 0
    rows = records(tmp_path / "run" / "dpo" / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    assert all({"reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"} <= set(r) for r in steps)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at the first step
    assert any("val_reward_accuracy" in r for r in rows)
    trained = MiniLlava.from_pretrained(tmp_path / "run" / "dpo" / "final").state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in trained if k.startswith("projector"))
    assert (tmp_path / "run" / "dpo" / "loss.png").stat().st_size > 10_000


def test_a_dpo_stage_refuses_data_that_are_not_pairs(tmp_path):
    recipe = dpo_recipe(tmp_path)
    recipe["stages"][1]["data"][0]["path"] = str(tmp_path / "data" / "train" / "questions.json")
    recipe["stages"][1]["val_data"] = []
    with pytest.raises(ValueError, match="no usable sample"):
        train(TrainConfig.from_dict(recipe))
    with pytest.raises(ValueError, match="preference.loss 'hinge'"):
        TrainConfig.from_dict({**recipe, "stages": [{**recipe["stages"][1], "preference": {"loss": "hinge"}}]})


def _run_cli(tmp_path: Path, recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "minillava", "train", "--config", str(recipe), *extra],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_dpo_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    for name in ("reference", "killed"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(dpo_recipe(tmp_path, name, steps=8)))
    reference = _run_cli(tmp_path, tmp_path / "reference.yaml")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    killed = _run_cli(tmp_path, tmp_path / "killed.yaml", "stages.dpo.save_every=1")
    deadline = time.time() + 120
    while not list((tmp_path / "killed" / "dpo").glob("checkpoints/step-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.5))
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "dpo" / "DONE").exists()
    resumed = _run_cli(tmp_path, tmp_path / "killed.yaml", "stages.dpo.save_every=1", "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    ours = load_file(str(tmp_path / "killed" / "dpo" / "final" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "reference" / "dpo" / "final" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
