"""The `minillava` command: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from minillava.cli import chat, data, demo, eval, export, model, serve, train, ui

GROUPS = (demo, train, model, data, eval, serve, chat, ui, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillava", description="LLaVA-style vision-language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Per-tensor "Loading weights" bars from transformers drown the command's own progress and output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # peft asks transformers a deprecated question on every LoRA wrap; the warning says nothing to our users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.run(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"minillava {args.command}: error: {error}", file=sys.stderr)
        return 2
