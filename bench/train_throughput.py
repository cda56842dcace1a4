"""Training throughput: minillava's stage-1 and stage-2 steps against a naive loop, side by side in one run.

The naive loop is written the way the well-known SimpleLLaVA tutorial trains: fp32, the vision encoder run on
every step, logits over the whole sequence, every batch padded to the data set's longest sample. Ours is the
real training step (`minillava.train.loop.StageRun`): bf16 autocast, loss only at labelled positions,
length-grouped batches and, in stage 1, encoder outputs read from the on-disk feature cache. Both train the
same model (the naive loop an fp32 copy of it) on the same synthetic shapes data with the same optimizer
settings. Achieved FLOP/s (counted with torch's FlopCounterMode on one step) is printed against this machine's
measured matmul peak. Last, one AdamW step over the whole language model and projector (what full fine-tuning,
the demo's stage 2, trains) is timed three ways: per tensor, foreach and fused (ours).

    python bench/train_throughput.py [--vision efficientnet-lite0] [--llm smollm2-135m-instruct] [--steps 6]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from minillava.data.collate import Batch, collate
from minillava.data.synth import synthesize_shapes
from minillava.data.tokenize import IGNORE_INDEX
from minillava.train.config import DataSource, ModelSpec, StageConfig, TrainConfig, Tuning
from minillava.train.loop import StageRun

# (m, k, n) of the probe: a large square product, and the language model's MLP projection at a training batch's
# token count (8 x ~80 tokens, SmolLM2's 576 -> 1536), the shape that dominates the steps.
PEAK_SHAPES = ((2048, 2048, 2048), (640, 576, 1536), (640, 1536, 576))


def matmul_peak(dtype: torch.dtype, repeats: int = 20) -> float:
    """The best FLOP/s over a few matmul shapes, each timed `repeats` times after a warm-up (best, not median: the
    probe asks what the hardware can do, and a busy moment only ever slows a product down)."""
    best = 0.0
    for m, k, n in PEAK_SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - start))
    return best


def stage_config(name: str, data: Path, batch_size: int) -> StageConfig:
    if name == "align":
        return StageConfig(name="align", data=[DataSource(str(data / "captions.json"), format="llava-pretrain")],
                           projector=Tuning(mode="full"), lr=1e-3, batch_size=batch_size, precision="bf16",
                           feature_cache=True, max_steps=10_000)
    return StageConfig(name="instruct", data=[DataSource(str(data / "questions.json"))],
                       projector=Tuning(mode="full", lr=2e-5), language_model=Tuning(mode="lora", lr=2e-4, lora_r=64,
                                                                                    lora_alpha=128),
                       lr=2e-4, batch_size=batch_size, precision="bf16", max_steps=10_000)


class NaiveLoop:
    """A SimpleLLaVA-style step on the same model: fp32, encoder every step, full logits, pad to the maximum."""

    def __init__(self, run: StageRun):
        self.run = run
        # Its own fp32 copy: the stage run stores the frozen LM in bf16, which would quietly make this loop bf16.
        self.model = copy.deepcopy(run.model).float()
        self.samples = run.train_set.samples
        self.max_len = max(len(s.input_ids) for s in self.samples)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.position = 0

    def batch(self, size: int) -> Batch:
        chosen = [self.samples[(self.position + i) % len(self.samples)] for i in range(size)]
        self.position += size
        pad = self.model.tokenizer.pad_token_id
        padding = [self.max_len - len(s.input_ids) for s in chosen]
        ids = [s.input_ids + [pad] * n for s, n in zip(chosen, padding, strict=True)]
        labels = [s.labels + [IGNORE_INDEX] * n for s, n in zip(chosen, padding, strict=True)]
        batch = collate(ids, labels, pad, [self.model.pixel_values(s.images) for s in chosen])
        batch.attention_mask = torch.tensor([[1] * len(s.input_ids) + [0] * n for s, n in zip(chosen, padding,
                                                                                               strict=True)])
        return batch

    def step(self, size: int) -> tuple[int, int]:
        batch = self.batch(size)
        self.optimizer.zero_grad()
        embeds = self.model.embed(batch.input_ids, batch.pixel_values)
        logits = self.model.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        self.optimizer.step()
        return size, int(batch.attention_mask.sum())


def ours_step(run: StageRun) -> tuple[int, int]:
    _, _, samples, tokens = run._train_step()
    return samples, tokens


def timed(steps: dict, repeats: int) -> dict[str, tuple[float, int, int]]:
    """Median seconds per step and the samples and tokens of a step, for each loop; the loops take turns
    so that a shared machine's load falls on both alike."""
    times = {label: [] for label in steps}
    sizes = {}
    for _ in range(repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            sizes[label] = step()
            times[label].append(time.perf_counter() - start)
    return {label: (statistics.median(times[label]), *sizes[label]) for label in steps}


def counted_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def optimizer_steps(params: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Median seconds of one AdamW step over fp32 copies of `params` (given random gradients), per implementation;
    they take turns, as the loops do."""
    params = [p.detach().float().requires_grad_(True) for p in params]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    variants = {"per tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused (ours)": {"fused": True}}
    optimizers = {label: torch.optim.AdamW(params, lr=1e-4, **kw) for label, kw in variants.items()}
    for optimizer in optimizers.values():
        optimizer.step()  # creates the moment buffers

    def stepper(optimizer: torch.optim.Optimizer):
        return lambda: (optimizer.step(), (0, 0))[1]  # timed() wants (samples, tokens); there are none

    medians = timed({label: stepper(o) for label, o in optimizers.items()}, repeats)
    return {label: seconds for label, (seconds, *_) in medians.items()}


def bench_stage(name: str, data: Path, out: Path, args: argparse.Namespace) -> dict:
    config = TrainConfig(output_dir=str(out), device="cpu", model=ModelSpec(vision=args.vision, llm=args.llm),
                         stages=[stage_config(name, data, args.batch_size)])
    run = StageRun(config, 0, out / name, previous=None, resume=False)
    run.model.train()
    naive = NaiveLoop(run)
    if run.cache is not None:  # steady state of later epochs: every image's features are on disk
        for start in range(0, len(run.train_set), args.batch_size):
            run._make_batch(run.train_set, list(range(start, min(start + args.batch_size, len(run.train_set)))))
    ours_step(run), naive.step(args.batch_size)  # warm-up
    steps = {"naive": lambda: naive.step(args.batch_size), "minillava": lambda: ours_step(run)}
    flops = {label: counted_flops(step) for label, step in steps.items()}
    results = {}
    for label, (seconds, samples, tokens) in timed(steps, args.steps).items():
        results[label] = {"s_per_step": seconds, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
                          "flops_per_step": flops[label], "flops_per_s": flops[label] / seconds}
    if name == "instruct":
        results["optimizer"] = optimizer_steps(list(run.model.language_model.parameters())
                                               + list(run.model.projector.parameters()), args.steps)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="efficientnet-lite0")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--images", type=int, default=64, help="synthetic shapes images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop (median reported)")
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak on {torch.get_num_threads()} threads: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "shapes")
        synthesize_shapes(data, n=args.images, seed=0, image_size=224)
        for stage in ("align", "instruct"):
            results = bench_stage(stage, data, Path(tmp, "run"), args)
            naive, ours = results["naive"], results["minillava"]
            print(f"\n{stage} ({args.vision} + {args.llm}, batch {args.batch_size}, median of {args.steps} steps)")
            print(f"{'loop':<10} {'s/step':>8} {'samples/s':>10} {'tokens/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} "
                  f"{'of peak':>8}")
            for label, r, precision in (("naive", naive, "fp32"), ("minillava", ours, "bf16")):
                print(f"{label:<10} {r['s_per_step']:>8.2f} {r['samples_per_s']:>10.2f} {r['tokens_per_s']:>9.0f} "
                      f"{r['flops_per_step'] / 1e9:>11.0f} {r['flops_per_s'] / 1e9:>8.0f} "
                      f"{r['flops_per_s'] / peak[precision]:>7.0%} ({precision})")
            print(f"speed-up (samples/s): {ours['samples_per_s'] / naive['samples_per_s']:.2f}x")
            if "optimizer" in results:
                steps = results["optimizer"]
                print(f"\nAdamW step over the language model and projector, fp32 (median of {args.steps})")
                for label, seconds in steps.items():
                    print(f"{label:<13} {seconds:>6.3f} s  {steps['per tensor'] / seconds:>5.2f}x")


if __name__ == "__main__":
    main()
