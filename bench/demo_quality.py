"""The demo's quality targets, measured: accuracy per data set and question kind on held-out data, target by target.

Without --model, runs `minillava demo` (the full preset unless told) and scores both stages, so the stage-1-only
model shows the gap. With --model, scores model folders (say, a longer stage 2, recipes/demo-more-steps.yaml) on
the same held-out questions, which the demo writes deterministically under its data folder.

    python bench/demo_quality.py                                   # the full demo in runs/demo, ~12 min on 2 cores
    python bench/demo_quality.py --preset long --out runs/demo-long
    python bench/demo_quality.py --model runs/demo/final                 # score a model folder again

Accuracy is VQA accuracy (exact match after VQA normalisation) for open questions and POPE accuracy for yes/no,
on 100 questions per kind (the full preset); the targets are the README's. Beside the held-out shapes scenes
(drawn like the training ones) it scores the shifted set: the same kinds of questions on scenes drawn and worded
as training never shows (synth drawing "shifted": other backgrounds, sizes, turns, layouts and wordings), which
may score at most 10 points below. A second table splits the shapes answers by the number of shapes in the scene: a
model that names the one shape of a lone-object scene but not its colour cannot read colour at all, which no
amount of binding explains. It measures quality only: timings are in the demo's results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from minillava.demo.data import EVAL_KINDS, fashion_ready, held_out_sets
from minillava.demo.presets import PRESETS
from minillava.demo.report import accuracy_table, targets_table
from minillava.demo.run import evaluate_stage, run_demo
from minillava.model import MiniLlava
from minillava.train.config import PRECISIONS, precision_dtype


def score_models(folders: list[str], data: Path, preset: str, batch_size: int,
                 precision: str = "bf16") -> tuple[dict, dict]:
    """Scores per model folder, and each folder's shapes predictions."""
    sets = held_out_sets(PRESETS.get(preset), data, fashion_ready())
    stages, predictions = {}, {}
    for folder in folders:
        model = MiniLlava.from_pretrained(folder, dtype=precision_dtype(precision)).eval()
        with torch.inference_mode():
            scored = evaluate_stage(model, sets, batch_size)
        stages[folder] = {name: {k: v for k, v in r.items() if k != "predictions"} for name, r in scored.items()}
        predictions[folder] = scored["shapes"]["predictions"]
    return stages, predictions


def by_scene_size(predictions: dict[str, list[dict]], scenes_file: Path) -> str:
    """Markdown: shapes accuracy per question kind and number of shapes in the image, one column per model."""
    sizes = {Path(s["image"]).name: len(s["shapes"]) for s in json.loads(scenes_file.read_text())}
    names = list(predictions)
    cells: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, rows in predictions.items():
        for row in rows:
            cells[(row["kind"], sizes[Path(row["image"]).name])][name].append(row["score"])
    lines = ["| kind | shapes in the image | n | " + " | ".join(f"{n} (%)" for n in names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for (kind, size), scores in sorted(cells.items()):
        n = len(next(iter(scores.values())))
        values = " | ".join(f"{100 * sum(scores[m]) / len(scores[m]):.1f}" if scores[m] else "-" for m in names)
        lines.append(f"| {kind} | {size} | {n} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="full", help="demo preset (sets the number of held-out questions)")
    parser.add_argument("--out", default="runs/demo", help="the demo's output folder")
    parser.add_argument("--model", nargs="+", help="score these model folders instead of running the demo")
    parser.add_argument("--data", help="held-out data folder for --model (default: OUT/data)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16",
                        help="--model folders are scored in this (default: bf16, as the demo evaluates its recipe)")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    data = Path(args.data or Path(args.out) / "data")
    if args.model:
        stages, predictions = score_models(args.model, data, args.preset, args.batch_size, args.precision)
    else:
        results = run_demo(args.preset, args.out)
        stages = results["stages"]
        print(f"\n{args.preset} preset: trained in {results['seconds']['train']:.0f} s, "
              f"evaluated in {results['seconds']['evaluate']:.0f} s")
        predictions = {}
        for name in stages:
            rows = [json.loads(line) for line in open(Path(args.out) / f"predictions-{name}.jsonl")]
            predictions[name] = [row for row in rows if row.get("kind") in EVAL_KINDS["shapes"]
                                 and "shapes-test" in row["image"]]
    print("\nAccuracy on held-out data (%):\n")
    print(accuracy_table({"stages": stages}, column="after {} (%)" if not args.model else "{} (%)"))
    print("\nTargets (for the full preset):\n")
    print(targets_table(stages))
    print("\nShapes accuracy by the number of shapes in the image (%):\n")
    print(by_scene_size(predictions, data / "shapes-test" / "scenes.json"))
    if args.json:
        Path(args.json).write_text(json.dumps(stages, indent=1) + "\n")


if __name__ == "__main__":
    main()
