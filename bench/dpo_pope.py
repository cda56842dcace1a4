"""Preference tuning against hallucination, measured: POPE before and after the dpo stage, and every other kind.

Scores two model folders (the demo's model and the same after `recipes/dpo.yaml`) on the demo's held-out data:
POPE (yes/no object questions, "yes" positive: accuracy, precision, recall, F1, yes-ratio) on the held-out shapes
scenes and on the shifted scenes, and the accuracy of the other question kinds, which the stage must not cost
more than 2 points. The target is POPE F1 up 5 points or more on the held-out scenes.

    minillava demo                                        # the demo's model in runs/demo/final, ~15 min
    minillava train --config recipes/dpo.yaml             # the dpo stage on top of it
    python bench/dpo_pope.py                              # this table (both models, ~6 min on 2 cores)

The held-out questions are the ones the demo writes deterministically under its data folder (generated here when
missing). Both models are scored in the same precision, one after the other in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from minillava.demo.data import EvalSet, fashion_ready, held_out_sets
from minillava.demo.presets import PRESETS
from minillava.demo.run import evaluate_stage
from minillava.model import MiniLlava
from minillava.train.config import PRECISIONS, precision_dtype

POPE_KEYS = ("f1", "accuracy", "precision", "recall", "yes_ratio")
F1_TARGET = 5.0  # points of POPE F1 the stage must add on the held-out scenes
MAX_KIND_DROP = 2.0  # points any other kind may lose


def bench_sets(data: Path, yesno: int, per_kind: int) -> list[EvalSet]:
    """The demo's held-out sets with `yesno` POPE questions each and `per_kind` of every other kind."""
    preset = replace(PRESETS.get("full"), eval_per_kind=max(yesno, per_kind))
    return [s.first(per_kind, {"yesno": yesno}) for s in held_out_sets(preset, data, fashion_ready())]


def score(folder: str, sets: list[EvalSet], batch_size: int, precision: str) -> dict:
    """Per set: POPE metrics of its yes/no answers and the accuracy of each kind."""
    model = MiniLlava.from_pretrained(folder, dtype=precision_dtype(precision)).eval()
    with torch.inference_mode():
        scored = evaluate_stage(model, sets, batch_size)
    return {name: {key: result[key] for key in ("pope", "by_kind", "n_by_kind")} for name, result in scored.items()}


def tables(before: dict, after: dict) -> str:
    lines = ["| data | POPE | before | after | change |", "|---|---|---:|---:|---:|"]
    for name in before:
        for key in POPE_KEYS:
            b, a = before[name]["pope"][key], after[name]["pope"][key]
            lines.append(f"| {name} (n {before[name]['pope']['n']}) | {key} | {100 * b:.1f} | {100 * a:.1f} | "
                         f"{100 * (a - b):+.1f} |")
    lines += ["", "| data | kind | n | before (%) | after (%) | change |", "|---|---|---:|---:|---:|---:|"]
    for name in before:
        for kind, b in before[name]["by_kind"].items():
            a = after[name]["by_kind"][kind]
            lines.append(f"| {name} | {kind} | {before[name]['n_by_kind'][kind]} | {100 * b:.1f} | {100 * a:.1f} | "
                         f"{100 * (a - b):+.1f} |")
    return "\n".join(lines)


def verdict(before: dict, after: dict) -> list[str]:
    f1 = 100 * (after["shapes"]["pope"]["f1"] - before["shapes"]["pope"]["f1"])
    lines = [f"POPE F1 on held-out shapes: {f1:+.1f} points (target >= +{F1_TARGET:.0f}): "
             f"{'met' if f1 >= F1_TARGET else 'NOT met'}"]
    accuracy = 100 * (after["shapes"]["pope"]["accuracy"] - before["shapes"]["pope"]["accuracy"])
    ratio = before["shapes"]["pope"]["yes_ratio"], after["shapes"]["pope"]["yes_ratio"]
    lines.append(f"POPE accuracy on held-out shapes: {accuracy:+.1f} points, yes-ratio {ratio[0]:.2f} -> {ratio[1]:.2f}"
                 + (" (F1 up with accuracy not: the yes-ratio moved, hallucinations did not fall)"
                    if f1 > 0 and accuracy <= 0 else ""))
    drops = [(name, kind, 100 * (after[name]["by_kind"][kind] - b)) for name in before
             for kind, b in before[name]["by_kind"].items() if kind != "yesno"]
    worst = min(drops, key=lambda d: d[2])
    lines.append(f"largest change of another kind: {worst[0]} {worst[1]} {worst[2]:+.1f} points (may fall at most "
                 f"{MAX_KIND_DROP:.0f}): {'met' if worst[2] >= -MAX_KIND_DROP else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="runs/demo/final", help="the model before the dpo stage")
    parser.add_argument("--after", default="runs/dpo/dpo/final", help="the model after it")
    parser.add_argument("--data", default="runs/demo/data", help="the demo's data folder (held-out sets)")
    parser.add_argument("--yesno", type=int, default=300, help="POPE questions per data set")
    parser.add_argument("--per-kind", type=int, default=100, help="questions of every other kind per data set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sets = bench_sets(Path(args.data), args.yesno, args.per_kind)
    before = score(args.before, sets, args.batch_size, args.precision)
    after = score(args.after, sets, args.batch_size, args.precision)
    print(tables(before, after))
    print()
    print("\n".join(verdict(before, after)))
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "after": after, "models": [args.before, args.after]},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
