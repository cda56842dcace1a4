"""`minillava train --config RECIPE.yaml [key=value ...] [--resume]`."""

from __future__ import annotations

import argparse
import sys


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train the stages of a recipe (align, instruct, ...)")
    train.add_argument("--config", required=True, help="a recipe YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seed=1 stages.align.max_steps=100")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from minillava.train.config import load_recipe
    from minillava.train.loop import TrainingStopped, train

    config = load_recipe(args.config, args.overrides)
    try:
        summaries = train(config, resume=args.resume)
    except TrainingStopped as stopped:
        print(f"minillava train: {stopped}", file=sys.stderr)
        return 3
    for s in summaries:
        val = f", validation loss {s.final_val_loss:.4f}" if s.final_val_loss is not None else ""
        loss = f"{s.final_train_loss:.4f}" if s.final_train_loss is not None else "-"
        print(f"{s.stage}: {s.steps} steps, {s.samples} samples, {s.seconds:.1f} s, train loss {loss}{val}, "
              f"{s.skipped['total']} skipped -> {s.final_dir}")
    return 0
