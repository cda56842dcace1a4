"""The language model's attention kernel in training: torch's fused SDPA against eager (matmul + softmax).

Runs one of the demo's training steps on the embedded model with bf16 autocast and the feature cache: stage 2
(`--stage instruct`: the whole language model trained on multi-turn shapes conversations) or stage 1
(`--stage align`: the projector only, on captions in the chat template), and times forward + backward on the
same batches, the two kernels taking turns batch by batch, so a shared machine's load falls on both alike.
Prints the median seconds per batch of each, the ratio, and the largest loss difference (the kernels compute
the same function; bf16 rounds them differently).

    python bench/attention_kernels.py [--stage instruct|align] [--images 48] [--batch-size 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minillava.data.synth import synthesize_shapes
from minillava.model.language import set_attention
from minillava.train.config import DataSource, ModelSpec, StageConfig, TrainConfig, Tuning
from minillava.train.loop import StageRun

KERNELS = ("sdpa", "eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("instruct", "align"), default="instruct")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--images", type=int, default=48, help="synthetic shapes images (one conversation each)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6, help="distinct batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "shapes")
        synthesize_shapes(data, n=args.images, seed=0, image_size=224)
        if args.stage == "instruct":
            source, language_model = DataSource(str(data / "conversations.json")), Tuning(mode="full", lr=1e-4)
        else:
            source, language_model = DataSource(str(data / "captions.json"), format="llava"), Tuning()
        stage = StageConfig(name=args.stage, data=[source], projector=Tuning(mode="full"),
                            language_model=language_model, lr=1e-3, batch_size=args.batch_size,
                            precision="bf16", feature_cache=True, max_steps=10_000)
        config = TrainConfig(output_dir=tmp, device="cpu", model=ModelSpec(llm=args.llm), stages=[stage])
        run = StageRun(config, 0, Path(tmp, "run"), previous=None, resume=False)
        run.model.train()
        batches = [run._next_batch() for _ in range(args.batches)]
        lengths = [b.input_ids.shape[1] for b in batches]
        seconds: dict[str, list[float]] = {k: [] for k in KERNELS}
        losses: dict[str, list[float]] = {k: [] for k in KERNELS}
        for kernel in KERNELS:  # warm-up
            set_attention(run.model.language_model, kernel)
            run._forward(batches[0]).loss.backward()
        for _ in range(args.rounds):
            for batch in batches:
                for kernel in KERNELS:
                    set_attention(run.model.language_model, kernel)
                    run.model.zero_grad(set_to_none=True)
                    start = time.perf_counter()
                    loss = run._forward(batch).loss
                    loss.backward()
                    seconds[kernel].append(time.perf_counter() - start)
                    losses[kernel].append(float(loss.detach()))
    median = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"{args.stage} forward + backward, {args.llm}, batch {args.batch_size}, {len(batches)} batches of "
          f"{min(lengths)}-{max(lengths)} tokens, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for kernel in KERNELS:
        print(f"{kernel:<6} {median[kernel]:.3f} s per batch (median)")
    print(f"eager / sdpa time: {median['eager'] / median['sdpa']:.2f} "
          f"(eager is {median['sdpa'] / median['eager']:.2f}x as fast)")
    print(f"largest loss difference: {max(abs(a - b) for a, b in zip(*losses.values(), strict=True)):.2e}")


if __name__ == "__main__":
    main()
