"""AnyRes against one view on small objects: held-out accuracy, image tokens and training time, in one run.

Trains recipes/anyres-small-objects.yaml twice, as written (AnyRes: a global view plus a 4x4 grid of 64 px tiles
of the 256 px canvas) and with `model.anyres=null` (one 64 px view of the whole canvas), on the same generated
data, steps and seed, then asks each final model the held-out questions with minillava's `vqa` evaluation:

    OMP_NUM_THREADS=1 python bench/anyres_small_objects.py [--steps N] [--out runs/bench-small-objects]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "anyres-small-objects.yaml"
VARIANTS = {"single view": ["model.anyres=null"], "anyres": []}


def recipe(out: Path, steps: int | None, *overrides: str):
    """The recipe with its data under out/data, no evaluation during training (timed apart) and `steps` steps
    (None: the recipe's)."""
    from minillava.data.small_objects import SPLITS
    from minillava.train.config import load_recipe

    steps_override = [] if steps is None else [f"stages.shapes.max_steps={steps}"]
    return load_recipe(RECIPE, [*steps_override, "stages.shapes.evals=[]",
                                f"stages.shapes.data.0.path={out / 'data' / SPLITS['train']}", *overrides])


def run_variant(name: str, overrides: list[str], out: Path, steps: int | None) -> dict:
    from minillava.data.small_objects import SPLITS
    from minillava.eval.runner import evaluate_file
    from minillava.model import MiniLlava
    from minillava.train.loop import train

    config = recipe(out, steps, f"output_dir={out / name.replace(' ', '-')}", *overrides)
    start = time.perf_counter()
    summary = train(config)[-1]
    train_seconds = time.perf_counter() - start
    model = MiniLlava.from_pretrained(summary.final_dir).eval()
    result = evaluate_file(model, "vqa", out / "data" / SPLITS["held-out"], progress=False)
    first = result.predictions[0]["image"]
    plan = model.image_planner.plan(first)
    answers = Counter(p["prediction"] for p in result.predictions)
    return {"accuracy": result.metrics["accuracy"], "n": result.metrics["n"], "views": plan.views,
            "image_tokens": plan.tokens, "train_s": train_seconds, "eval_s": result.metrics["seconds"],
            "final_loss": summary.final_train_loss, "answers": dict(answers.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--out", default="runs/bench-small-objects", help="a new folder for the data and runs")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new --out (runs are not resumed)")
    from minillava.train.data import ensure_synthetic

    base = recipe(out, args.steps)
    print(f"{torch.get_num_threads()} threads; {RECIPE.name}, {base.stages[0].max_steps} steps each")
    ensure_synthetic(base.stages[0].data[0])  # once, before the timed runs
    results = {name: run_variant(name, overrides, out, args.steps) for name, overrides in VARIANTS.items()}
    print(f"\n{'variant':>12} {'views':>5} {'image tokens':>12} {'train s':>8} {'eval s':>7} {'loss':>6} "
          f"{'held-out accuracy':>17}")
    for name, r in results.items():
        print(f"{name:>12} {r['views']:>5} {r['image_tokens']:>12} {r['train_s']:8.1f} {r['eval_s']:7.1f} "
              f"{r['final_loss']:6.3f} {r['accuracy']:>11.3f} (n={r['n']})")
    gain = results["anyres"]["accuracy"] - results["single view"]["accuracy"]
    print(f"\nAnyRes - single view: {100 * gain:+.1f} points (chance: 25 %, four shapes)")
    for name, r in results.items():
        print(f"{name} answers: {r['answers']}")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
