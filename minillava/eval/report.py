"""EVAL_REPORT.md: every evaluation found in a run, against a user's baseline and the field's published figures."""

from __future__ import annotations

import json
from pathlib import Path

from minillava.eval.run_info import RunInfo, inspect_run
from minillava.eval.tasks import TASKS

# After the task's headline metric, these come next; the rest follow alphabetically.
METRIC_ORDER = {"pope": ["accuracy", "precision", "recall", "yes_ratio"], "caption": ["bleu4", "similarity"]}
# Fractions in [0, 1] are printed as percentages, as papers print them (CIDEr-D too: 1.17 reads 117.0).
PERCENT = frozenset({"accuracy", "f1", "precision", "recall", "yes_ratio", "cider_d", "bleu4", "similarity", "score"})
SKIPPED = frozenset({"task", "n", "seconds", "samples_per_s", "max_new_tokens", "by_kind", "n_by_kind", "judge", "ood",
                     "tp", "fp", "tn", "fn", "unscored"})

# REFERENCE.md section 7: the field's headline numbers, for context only.
PUBLISHED = [
    ("LLaVA-1.5-7B", "VQAv2 78.5, GQA 62.0, TextVQA 58.2, POPE 85.9 (F1), MME 1510.7",
     "stage 1 3.5 h + stage 2 ~10 h on 8xA100"),
    ("TinyLLaVA (SigLIP + Qwen2.5-0.5B)", "VQAv2 75.3, MMMU 33.3, POPE 86.1", ""),
    ("nanoVLM 222M", "MMStar 35.3", "~6 h on 1xH100"),
    ("MiniMind-V (~160M params)", "-", "one SFT epoch ~2 h on one RTX 3090"),
]


def fmt(metric: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{100 * value:.1f}" if metric in PERCENT else (f"{value:.4g}" if isinstance(value, float) else str(value))


def _signed(metric: str, value: float) -> str:
    value = round(100 * value, 1) + 0.0 if metric in PERCENT else value  # + 0.0: no "-0.0"
    return f"{value:+.1f}" if metric in PERCENT else f"{value:+.4g}"


def metric_names(task: str, metrics: dict) -> list[str]:
    numeric = [k for k, v in metrics.items() if k not in SKIPPED and isinstance(v, int | float)]
    headline = [TASKS.get(task).headline] if task in TASKS else []
    first = [k for k in headline + METRIC_ORDER.get(task, []) if k in numeric]
    return first + sorted(k for k in numeric if k not in first)


def load_baseline(path: str | Path | None) -> tuple[str, dict]:
    """A baseline file: {"name": "...", "results": {"<eval name or task>": {"<metric>": value}}}, or just the
    results mapping. Values are on the same scale as metrics.json (fractions)."""
    if path is None:
        return "", {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a baseline must be a JSON object")
    results = data.get("results", {k: v for k, v in data.items() if k != "name"})
    if not all(isinstance(v, dict) for v in results.values()):
        raise ValueError(f"{path}: each baseline entry must map metric names to numbers")
    return str(data.get("name", Path(path).stem)), results


def _eval_table(info: RunInfo, baseline_name: str, baseline: dict) -> list[str]:
    if not info.evals:
        return ["No evaluation outputs found (metrics.json with a \"task\" key) under this run.", ""]
    lines = []
    for ev in info.evals:
        base = baseline.get(ev.name) or baseline.get(ev.task) or {}
        n = ev.metrics.get("n", "?")
        lines += [f"### {ev.name} ({ev.task}, {n} samples)", ""]
        header = "| metric | this model |" + (f" {baseline_name} | difference |" if base else "")
        lines += [header, "|---|---|" + ("---|---|" if base else "")]
        for metric in metric_names(ev.task, ev.metrics):
            value = ev.metrics[metric]
            row = f"| {metric} | {fmt(metric, value)} |"
            if base:
                other = base.get(metric)
                diff = "" if not isinstance(other, int | float) else _signed(metric, value - other)
                row += f" {fmt(metric, other) if other is not None else '-'} | {diff} |"
            lines.append(row)
        lines.append("")
        if ev.metrics.get("by_kind"):
            counts = ev.metrics.get("n_by_kind", {})
            lines += ["| kind | score | n |", "|---|---|---|"]
            lines += [f"| {k} | {100 * v:.1f} | {counts.get(k, '')} |" for k, v in ev.metrics["by_kind"].items()]
            lines.append("")
        if ev.metrics.get("judge"):
            lines += [f"Judge: `{json.dumps(ev.metrics['judge'], sort_keys=True)}`", ""]
        if ev.metrics.get("ood"):
            ood = ev.metrics["ood"]
            lines += [f"Out-of-distribution: {ood.get('flagged')} of {ood.get('n')} images flagged "
                      f"({ood.get('method')}, threshold {ood.get('threshold')}).", ""]
    return lines


def _training_evals(info: RunInfo) -> list[str]:
    rows = [f"| {s.name} | {key} | {fmt(key.rsplit('/', 1)[-1], v['value'])} | {v['step']} |"
            for s in info.stages for key, v in s.logged.items()]
    if not rows:
        return []
    return ["## Logged during training", "", "Last value of each metric logged in metrics.jsonl.", "",
            "| stage | metric | value | step |", "|---|---|---|---|", *rows, ""]


def eval_report(info: RunInfo, baseline_name: str = "", baseline: dict | None = None) -> str:
    lines = [f"# Evaluation report: {info.root.name}", "",
             f"Run folder `{info.root}`; model `{info.model_dir or 'not found'}`.",
             "Percentages for fractions (accuracy, F1, ...; CIDEr-D x100 as papers print it).", "",
             "## Results", ""]
    lines += _eval_table(info, baseline_name or "baseline", baseline or {})
    lines += _training_evals(info)
    if info.results is not None:
        text = json.dumps(info.results, indent=1, ensure_ascii=False)
        lines += ["## Demo results (results.json)", "", "```json", text[:6000], "```", ""]
    lines += ["## The field's published figures, for context", "",
              "Different benchmarks, data and model sizes: these numbers frame the scale of the field's results; "
              "they are not comparable to scores on this run's data.", "",
              "| system | reported | training cost |", "|---|---|---|"]
    lines += [f"| {name} | {figures} | {cost} |" for name, figures, cost in PUBLISHED]
    return "\n".join(lines) + "\n"


def write_reports(run: str | Path, baseline: str | Path | None = None, out_dir: str | Path | None = None
                  ) -> tuple[Path, Path]:
    """Write EVAL_REPORT.md and MODEL_CARD.md (into the run folder unless out_dir is given)."""
    from minillava.eval.card import model_card

    info = inspect_run(run)
    name, results = load_baseline(baseline)
    out = Path(out_dir) if out_dir is not None else info.root
    out.mkdir(parents=True, exist_ok=True)
    report, card = out / "EVAL_REPORT.md", out / "MODEL_CARD.md"
    report.write_text(eval_report(info, name, results), encoding="utf-8")
    card.write_text(model_card(info), encoding="utf-8")
    return report, card
