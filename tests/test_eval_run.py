"""Evaluation runs on a tiny model: in memory, through the CLI, with OOD scores; `eval score` on files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from minillava.cli import main
from minillava.eval import evaluate, fit_ood, load_samples
from minillava.eval.ood import Detector
from minillava.model import GenerationConfig, MiniLlava, build_prompt


@pytest.fixture(scope="module")
def tiny_model(tiny_towers, tiny_llms, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-model") / "model"
    assert main(["init", "--vision", tiny_towers["clip"], "--llm", tiny_llms["llama"], "--out", str(folder)]) == 0
    return folder


def _noisy(rgb, seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb, dtype=float) + rng.normal(0, 20, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    (root / "img").mkdir()
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (20, 20, 220)}
    records = []
    for i, (name, rgb) in enumerate(colours.items()):
        _noisy(rgb, i).save(root / "img" / f"{name}.png")
        records.append({"id": f"q{i}", "image": f"img/{name}.png", "question": "What colour is it?",
                        "answers": [name] * 10, "kind": "color"})
        records.append({"id": f"y{i}", "image": f"img/{name}.png", "question": f"Is it {name}?", "answer": "yes",
                        "kind": "yesno"})
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_evaluate_in_memory_matches_plain_generation(tiny_model, data_dir):
    model = MiniLlava.from_pretrained(tiny_model)
    model.train()  # as the training loop would hand it over
    samples = load_samples(data_dir / "vqa.jsonl")
    result = evaluate(model, "vqa", samples, batch_size=4, max_new_tokens=6, progress=False)
    assert model.training  # given back in the mode it came in
    assert [p["id"] for p in result.predictions] == [s["id"] for s in samples]
    expected = model.generate([build_prompt(s["question"] + "\nAnswer the question using a single word or phrase.",
                                            [s["image"]]) for s in samples], GenerationConfig(max_new_tokens=6))
    assert [p["prediction"] for p in result.predictions] == [g.text.strip() for g in expected]
    first = result.predictions[0]
    assert first["kind"] == "color" and first["answers"] == ["red"] * 10 and first["image"].endswith("red.png")
    assert set(result.metrics) >= {"task", "accuracy", "n", "by_kind", "n_by_kind", "seconds"}
    assert result.metrics["n_by_kind"] == {"color": 3, "yesno": 3}


def test_post_prompt_asks_as_the_model_was_trained(tiny_model, data_dir):
    """A model trained without LLaVA's short-answer suffix is asked without it: post_prompt="" replaces the
    task's own, and a question that already ends with the suffix is not given it twice."""
    from minillava.eval.tasks import TASKS

    vqa, pope = TASKS.get("vqa"), TASKS.get("pope")
    suffix = "\nAnswer the question using a single word or phrase."
    assert vqa.prompt({"question": "Colour? "}) == "Colour?" + suffix
    assert vqa.prompt({"question": "Colour?" + suffix}) == "Colour?" + suffix
    assert pope.prompt({"question": "Is it red?"}, post_prompt="") == "Is it red?"
    assert vqa.prompt({"question": "Colour?"}, post_prompt=" Be brief.") == "Colour? Be brief."
    assert TASKS.get("caption").post_prompt == "" and TASKS.get("judge").post_prompt == ""
    model = MiniLlava.from_pretrained(tiny_model)
    samples = load_samples(data_dir / "vqa.jsonl")[:3]
    result = evaluate(model, "vqa", samples, max_new_tokens=6, progress=False, post_prompt="")
    expected = model.generate([build_prompt(s["question"], [s["image"]]) for s in samples],
                              GenerationConfig(max_new_tokens=6))
    assert [p["prediction"] for p in result.predictions] == [g.text.strip() for g in expected]
    assert result.metrics["post_prompt"] == ""


def test_evaluate_mc_and_pope_with_pil_images(tiny_model):
    model = MiniLlava.from_pretrained(tiny_model)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    mc = evaluate(model, "mc", [{"id": "m", "image": image, "question": "Colour?", "choices": ["red", "blue"],
                                 "answer": "A"}], max_new_tokens=3, progress=False)
    assert set(mc.predictions[0]) >= {"id", "question", "prediction", "answer", "choices", "parsed", "score"}
    assert "image" not in mc.predictions[0]  # a PIL image is not written out
    pope = evaluate(model, "pope", [{"id": "p", "image": image, "question": "Is there a cat?", "answer": "no"}],
                    max_new_tokens=3, progress=False)
    assert set(pope.metrics) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    with pytest.raises(ValueError, match=r"sample 0 \(id 'm'\): a multiple-choice sample needs `choices`"):
        evaluate(model, "mc", [{"id": "m", "image": image, "question": "?", "answer": "A"}], progress=False)


def test_eval_cli_end_to_end(tiny_model, data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model), "--task", "vqa", "--data", str(data_dir / "vqa.jsonl"),
                 "--out", str(out), "--limit", "4", "--batch-size", "2", "--max-new-tokens", "4"]) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert set(json.loads(lines[0])) >= {"id", "question", "prediction", "answers", "kind", "score"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "vqa" and metrics["n"] == 4 and metrics["model"] == str(tiny_model)
    assert json.loads(capsys.readouterr().out)["n"] == 4
    # A LLaVA-format training file works as evaluation data; a missing image names the sample.
    llava = [{"id": "c1", "image": "img/red.png", "kind": "color",
              "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
             {"id": "c2", "image": "img/none.png",
              "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]}]
    (data_dir / "llava.json").write_text(json.dumps(llava))
    samples = load_samples(data_dir / "llava.json", limit=1)
    assert samples[0]["question"] == "What colour?" and samples[0]["answer"] == "red"
    assert main(["eval", "--model", str(tiny_model), "--task", "vqa", "--data", str(data_dir / "llava.json"),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "llava.json[1] (id 'c2')" in err and "not found" in err
    assert main(["eval", "--task", "vqa"]) == 2
    assert "missing --model, --data, --out" in capsys.readouterr().err


def test_eval_score_cli(tmp_path, capsys):
    def score(task, records):
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        assert main(["eval", "score", "--task", task, "--predictions", str(path)]) == 0
        return json.loads(capsys.readouterr().out)

    vqa = score("vqa", [{"id": "1", "prediction": "Two", "answers": ["2"] * 2 + ["3"] * 8},
                        {"id": "2", "prediction": "yes", "answer": "yes"}])
    assert vqa["accuracy"] == pytest.approx((0.6 + 1.0) / 2)
    mc = score("mc", [{"id": "1", "prediction": "(B)", "answer": "B"}, {"id": "2", "prediction": "A", "answer": "C"}])
    assert mc["accuracy"] == 0.5
    pope = score("pope", [{"id": "1", "prediction": "Yes", "answer": "yes"}, {"id": "2", "prediction": "Yes",
                                                                           "answer": "no"},
                          {"id": "3", "prediction": "No", "answer": "no"}, {"id": "4", "prediction": "No",
                                                                          "answer": "yes"}])
    assert {k: pope[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")} == {
        "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}
    (tmp_path / "broken.jsonl").write_text('{"id": "1", "answer": "x"}\n')
    assert main(["eval", "score", "--task", "vqa", "--predictions", str(tmp_path / "broken.jsonl")]) == 2
    assert "needs an object with a `prediction`" in capsys.readouterr().err


def test_ood_detector_in_eval_and_generate(tiny_model, data_dir, tmp_path, capsys):
    model = MiniLlava.from_pretrained(tiny_model)
    train = [_noisy((200, 40, 40), seed) for seed in range(30)]
    detector = fit_ood(model, train)
    assert detector.info["n_holdout"] == 6 and detector.threshold is not None
    inside = detector.score(model, [_noisy((200, 40, 40), 100 + s) for s in range(8)])
    outside = detector.score(model, [_noisy((30, 40, 220), 200 + s) for s in range(8)])
    assert min(outside) > max(inside)  # a different colour is far from the red training images
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    detector.save(folder)
    loaded = Detector.load(folder)
    assert loaded.score(model, train[:3]) == pytest.approx(detector.score(model, train[:3]), rel=1e-5)
    assert Detector.load(tiny_model) is None
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(folder), "--task", "vqa", "--data", str(data_dir / "vqa.jsonl"),
                 "--out", str(out), "--max-new-tokens", "2"]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_id = {p["id"]: p for p in predictions}
    assert by_id["q0"]["ood_score"] < by_id["q2"]["ood_score"]  # red is familiar, blue is not
    assert by_id["q2"]["ood_flag"] is True
    assert json.loads((out / "metrics.json").read_text())["ood"]["n"] == 6
    capsys.readouterr()
    assert main(["generate", "--model", str(folder), "--image", str(data_dir / "img" / "blue.png"), "--prompt", "Hi",
                 "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "blue.png: score" in err and "UNLIKE the training images" in err
