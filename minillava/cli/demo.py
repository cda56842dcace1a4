"""`minillava demo`: an end-to-end run on the embedded default model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="build the embedded default model and generate end to end")
    demo.add_argument("--out", default="runs/demo", help="where the model folder and data go")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from minillava.data.formats import load_conversations
    from minillava.data.synth import synthesize_shapes
    from minillava.model import GenerationConfig, MiniLlava, build_prompt

    out = Path(args.out)
    start = time.perf_counter()
    model = MiniLlava.from_components()  # EfficientNet-Lite0 -> mlp2x_gelu -> SmolLM2-135M-Instruct
    model.save_pretrained(out / "init")
    print(f"model: efficientnet-lite0 -> mlp2x_gelu -> smollm2-135m-instruct, {model.tokens_per_image} image "
          f"tokens; saved to {out / 'init'} ({time.perf_counter() - start:.1f} s)")
    conversations, _ = load_conversations(synthesize_shapes(out / "shapes", n=2, seed=0))
    questions = [c for c in conversations if c.turns[-1].role == "assistant"][:3]
    prompts = [build_prompt(c.turns[0].content, c.images) for c in questions]
    prompts.append(build_prompt("Name three primary colours."))
    start = time.perf_counter()
    results = model.generate(prompts, GenerationConfig(max_new_tokens=args.max_new_tokens))
    seconds = time.perf_counter() - start
    for prompt, result in zip(prompts, results, strict=True):
        print(f"\nQ: {prompt.turns[-1].content.replace(chr(10), ' ')}\nA: {result.text}")
    tokens = sum(len(r.token_ids) for r in results)
    print(f"\n{len(prompts)} prompts in one batch: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tok/s)")
    print("The projector is untrained, so image answers are not yet grounded; text-only answers come from "
          "SmolLM2 itself.")
    return 0
