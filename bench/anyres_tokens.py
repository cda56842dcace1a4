"""Tokens and time to first token per image: one padded view (LLaVA-1.5) against AnyRes tiles (LLaVA-NeXT).

A B/32-sized random CLIP tower (224 px, 49 tokens per view) + the embedded SmolLM2-135M-Instruct, once with one
padded view per image and once with AnyRes over LLaVA-NeXT's grid shapes at 224 px tiles; the same question about
images at three resolutions, greedy, one new token (so the time is the image encoding plus the prompt), from the
PIL image and the text, alternated, median of a few runs:

    python bench/anyres_tokens.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from generate_vs_hf import clip_b32_model
from PIL import Image

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
QUESTION = "Describe the image in detail."
PINPOINTS = [[448, 224], [224, 448], [448, 448], [672, 224], [224, 672], [672, 448], [448, 672]]
SIZES = [(224, 224), (640, 480), (1344, 448)]  # width x height: a tile, a photo, a panorama


def image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * height)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)


def first_token_seconds(model, picture: Image.Image) -> tuple[float, int]:
    from minillava.model import GenerationConfig, build_prompt

    start = time.perf_counter()
    result = model.generate([build_prompt(QUESTION, [picture])], GenerationConfig(max_new_tokens=1))[0]
    return time.perf_counter() - start, result.prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from minillava.model import AnyResConfig

    with tempfile.TemporaryDirectory() as tmp:
        models = {"pad (one view)": clip_b32_model(Path(tmp) / "pad").eval(),
                  "anyres": clip_b32_model(Path(tmp) / "anyres", anyres=AnyResConfig(PINPOINTS)).eval()}
        print(f"CLIP B/32-sized random tower + SmolLM2-135M-Instruct, float32, {torch.get_num_threads()} threads; "
              f"AnyRes grid {PINPOINTS}; median of {args.repeats}")
        print(f"{'image':>10} {'':>15} {'views':>5} {'image tokens':>12} {'prompt tokens':>13} {'TTFT s':>7} {'x':>6}")
        for width, height in SIZES:
            picture = image(width, height)
            times = {name: [] for name in models}
            prompts = {}
            for model in models.values():
                first_token_seconds(model, picture)  # warm-up
            for _ in range(args.repeats):
                for name, model in models.items():
                    seconds, prompts[name] = first_token_seconds(model, picture)
                    times[name].append(seconds)
            base = statistics.median(times["pad (one view)"])
            for name, model in models.items():
                plan = model.image_planner.plan(picture)
                ttft = statistics.median(times[name])
                print(f"{width:>5}x{height:<4} {name:>15} {plan.views:>5} {plan.tokens:>12} {prompts[name]:>13} "
                      f"{ttft:7.3f} {ttft / base:6.2f}")


if __name__ == "__main__":
    main()
