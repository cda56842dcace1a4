"""EVAL_REPORT.md and MODEL_CARD.md from a run folder laid out as training and `minillava eval` leave it."""

from __future__ import annotations

import json

import yaml

from minillava.cli import main
from minillava.eval.report import write_reports
from minillava.eval.run_info import inspect_run
from minillava.train.config import TrainConfig


def _run(tmp_path):
    run = tmp_path / "run"
    config = {"output_dir": str(run), "seed": 0, "device": "cpu",
              "stages": [{"name": "align", "data": [{"path": "data/captions.json", "format": "llava-pretrain",
                                                     "synth": {"kind": "shapes", "n": 48}}],
                          "projector": {"mode": "full"}, "lr": 0.001, "batch_size": 8, "precision": "bf16"},
                         {"name": "instruct", "data": [{"path": "data/questions.json", "weight": 2}],
                          "projector": {"mode": "full"}, "language_model": {"mode": "lora", "lora_r": 8},
                          "lr": 0.0002, "batch_size": 4, "grad_accum": 2}]}
    run.mkdir()
    # What `minillava train` writes: the recipe with every default filled in.
    (run / "config.yaml").write_text(yaml.safe_dump(TrainConfig.from_dict(config).to_dict(), sort_keys=False))
    for name, seconds, loss in (("align", 12.5, 2.5), ("instruct", 30.0, 1.25)):
        stage = run / name
        (stage / "final").mkdir(parents=True)
        (stage / "summary.json").write_text(json.dumps({
            "stage": name, "steps": 10, "samples": 80, "tokens": 4000, "seconds": seconds,
            "final_train_loss": loss, "final_val_loss": loss + 0.1, "skipped": {"total": 0}, "final_dir": ""}))
        (stage / "final" / "config.json").write_text(json.dumps({
            "vision": {"name": "efficientnet-lite0", "path": None, "feature_layer": -2, "select": "default",
                       "image_aspect": "pad", "image_size": None},
            "projector": "mlp2x_gelu", "llm": "smollm2-135m-instruct", "stored": ["projector"], "max_length": 2048}))
        (stage / "metrics.jsonl").write_text(
            json.dumps({"step": 5, "loss": 3.0, "lr": 0.001}) + "\n"
            + json.dumps({"step": 10, "val_loss": loss + 0.1, "eval/vqa/accuracy": 0.25}) + "\n")
    (run / "instruct" / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "instruct" / "checkpoints" / "step-1" / "metrics.json").write_text(json.dumps({"task": "vqa"}))
    (run / "instruct" / "final" / "ood.json").write_text(json.dumps({
        "method": "mahalanobis", "threshold": 41.5, "k": 5,
        "info": {"n_fit": 200, "quantile": 0.95, "auroc": {"fashion-mnist": 0.99, "photos": 0.875}}}))
    for name, metrics in (("vqa", {"task": "vqa", "accuracy": 0.625, "n": 40, "by_kind": {"color": 0.75},
                                   "n_by_kind": {"color": 20}}),
                          ("pope", {"task": "pope", "f1": 0.8, "accuracy": 0.75, "precision": 0.7, "recall": 0.9,
                                    "yes_ratio": 0.64, "n": 20})):
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "metrics.json").write_text(json.dumps(metrics))
    (run / "results.json").write_text(json.dumps({"answers": ["a red circle"]}))
    return run


def test_inspect_run_finds_stages_model_and_evals(tmp_path):
    info = inspect_run(_run(tmp_path))
    assert [s.name for s in info.stages] == ["align", "instruct"]
    assert info.model_dir == info.root / "instruct" / "final"
    assert [e.name for e in info.evals] == ["eval/pope", "eval/vqa"]  # checkpoints are skipped
    assert info.stages[1].logged == {"val_loss": {"value": 1.35, "step": 10},
                                     "eval/vqa/accuracy": {"value": 0.25, "step": 10}}
    assert info.ood["threshold"] == 41.5 and info.results == {"answers": ["a red circle"]}


def test_reports_show_results_baseline_and_card(tmp_path):
    run = _run(tmp_path)
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"name": "stage-1 only", "results": {"vqa": {"accuracy": 0.5}}}))
    report_path, card_path = write_reports(run, baseline)
    report = report_path.read_text()
    assert "### eval/vqa (vqa, 40 samples)" in report
    assert "| metric | this model | stage-1 only | difference |" in report
    assert "| accuracy | 62.5 | 50.0 | +12.5 |" in report
    assert "| color | 75.0 | 20 |" in report
    pope = report[report.index("### eval/pope"):]
    assert pope.index("| f1 | 80.0 |") < pope.index("| accuracy | 75.0 |")  # POPE's headline first
    assert "| instruct | eval/vqa/accuracy | 25.0 | 10 |" in report
    assert "LLaVA-1.5-7B" in report and "78.5" in report and "85.9" in report
    assert '"a red circle"' in report
    card = card_path.read_text()
    for heading in ("## Architecture and components", "## Training data", "## Training configuration and cost",
                    "## Results", "## Out-of-distribution warning", "## Limitations"):
        assert heading in card
    assert "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0)" in card
    assert "efficientnet-lite0" in card and "| projector | `mlp2x_gelu` |" in card
    assert "| instruct | vision frozen, projector full, language_model lora r=8 | 0.0002 | 4x2 | fp32 |" in card
    assert "Total training compute time: 42.5 s" in card
    assert "`data/captions.json` (generated: {'kind': 'shapes', 'n': 48})" in card
    assert "AUROC, held-out training images vs photos: 0.875" in card
    assert "POPE here: F1 80.0, yes-ratio 64.0" in card
    for topic in ("Hallucination", "OCR", "Out-of-distribution inputs", "Languages"):
        assert topic in card


def test_report_cli_on_a_bare_folder(tmp_path, capsys):
    (tmp_path / "eval-only").mkdir()
    (tmp_path / "eval-only" / "metrics.json").write_text(json.dumps({"task": "mc", "accuracy": 0.5, "n": 2}))
    out = tmp_path / "reports"
    assert main(["report", "--run", str(tmp_path / "eval-only"), "--out", str(out)]) == 0
    report, card = (out / "EVAL_REPORT.md").read_text(), (out / "MODEL_CARD.md").read_text()
    assert "### mc (mc, 2 samples)" in report and "| accuracy | 50.0 |" in report
    assert "No model folder found" in card and "No training recipe" in card
    assert "No POPE-style evaluation was run" in card
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
