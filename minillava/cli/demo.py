"""`minillava demo`: train the embedded default model on offline data, evaluate both stages, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="train a visual assistant offline, evaluate it and write a report")
    demo.add_argument("--preset", default="full",
                      help="full (within 15 minutes on 2 cores), quick (a few minutes) or long (half an hour)")
    demo.add_argument("--out", default="runs/demo", help="where data, training runs and the report go")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo from its checkpoints")
    demo.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from minillava.demo import run_demo as demo
    from minillava.demo.report import accuracy_table
    from minillava.train.loop import TrainingStopped

    try:
        results = demo(args.preset, args.out, resume=args.resume, batch_size=args.batch_size)
    except TrainingStopped as stopped:
        print(f"minillava demo: {stopped} (minillava demo --resume, with the same --preset and --out)",
              file=sys.stderr)
        return 3
    out = Path(args.out)
    print("\nAccuracy on held-out data (%):\n")
    print(accuracy_table(results))
    print("\nHeld-out answers, stage by stage:")
    for row in results["samples"][:8]:
        answers = "; ".join(f"{stage}: {row[stage]!r}" for stage in results["stages"])
        print(f"  {Path(row['image']).name}  {row['question'].splitlines()[0]}  (reference {row['reference']!r})\n"
              f"      {answers}")
    print("\nReal photos:")
    last = list(results["stages"])[-1]
    for row in results["photos"][:8]:
        print(f"  {Path(row['image']).name}  {row['question'].splitlines()[0]}  -> {row[last]!r}")
    met = [t for t in results["targets"] if t["met"] is not None]
    print(f"\nTargets met: {sum(t['met'] for t in met)} of {len(met)} (the targets are for the full preset)")
    print(f"Done in {results['seconds']['total']:.0f} s. Report: {out / 'report.md'}; model: {out / 'final'} "
          f"(try: minillava generate --model {out / 'final'} --image IMAGE --prompt QUESTION)")
    return 0
