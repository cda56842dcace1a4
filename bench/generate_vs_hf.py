"""Our generation loop against transformers' LlavaForConditionalGeneration.generate, on identical weights.

A CLIP-B/32-sized random tower (224 px, 49 tokens per image) + the embedded SmolLM2-135M-Instruct, exported with
`minillava export`; the same prompts and images, greedy, batch 1 and batch 8. Both sides start from PIL images
and text (preprocessing included). Prints medians of a few repeats and the ratios ours / transformers:

    time to first token (TTFT; lower is better), decode tokens/s (higher), peak memory above the loaded models.

    python bench/generate_vs_hf.py [--new-tokens 48] [--repeats 3] [--dtype float32|bfloat16] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PROMPTS = ["Describe the image in detail.", "What is in the picture?", "Which colours do you see?",
           "Is there a person here? Answer briefly.", "Write one sentence about this image.",
           "What could this be used for?", "Count the shapes.", "Describe the background and the foreground."]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 2 ms by a thread."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_base_mb(self) -> float:
        return (self.peak - self.base) / 2**20


B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
           patch_size=32)
PREPROCESSORS = {
    "clip": '{"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}, '
            '"crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "resample": 3, '
            '"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}',
    "siglip": '{"image_processor_type": "SiglipImageProcessor", "size": {"height": 224, "width": 224}, '
              '"resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}',
}


def clip_b32_model(folder: Path, tower: str = "clip", **options):
    """A B/32-sized random CLIP (or SigLIP) tower, saved under `folder`, + the embedded SmolLM2-135M-Instruct;
    `options` go to MiniLlava.from_components."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    from minillava.model import MiniLlava

    path = folder / f"{tower}-b32"
    torch.manual_seed(0)
    classes = (CLIPVisionModel, CLIPVisionConfig) if tower == "clip" else (SiglipVisionModel, SiglipVisionConfig)
    classes[0](classes[1](**B32)).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(PREPROCESSORS[tower])
    return MiniLlava.from_components(str(path), "smollm2-135m-instruct", seed=0, **options)


def build(folder: Path, dtype: torch.dtype):
    from minillava.export import export_hf_llava

    ours = clip_b32_model(folder)
    export_hf_llava(ours, folder / "hf")
    ours.save_pretrained(folder / "ours")  # for the memory runs in fresh processes
    ours = ours.to(dtype).eval()
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    theirs = LlavaForConditionalGeneration.from_pretrained(folder / "hf", dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(folder / "hf")
    processor.tokenizer.padding_side = "left"
    return ours, theirs, processor


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):  # smooth colour fields of varied sizes (square: identical pixels on both sides)
        side = 256 + 32 * i
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        out.append(Image.fromarray(base).resize((side, side), Image.BICUBIC))
    return out


def run_ours(model, batch: int, new_tokens: int) -> dict:
    from minillava.model import GenerationConfig, build_prompt

    conversations = [build_prompt(p, [im]) for p, im in zip(PROMPTS[:batch], images(batch), strict=True)]
    config = GenerationConfig(max_new_tokens=new_tokens)
    start = time.perf_counter()
    stamps = []
    run = model.stream(conversations, config)
    for _ in run:
        stamps.append(time.perf_counter())
    return {"stamps": [start, *stamps], "texts": [g.text for g in run.results],
            "tokens": [len(g.token_ids) for g in run.results]}


def run_theirs(model, processor, batch: int, new_tokens: int) -> dict:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.stamps = []

        def put(self, value):
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}]
                for p in PROMPTS[:batch]]
    start = time.perf_counter()
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    inputs = processor(images=images(batch), text=texts, return_tensors="pt", padding=True)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    clock = Clock()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, streamer=clock)
    replies = out[:, inputs["input_ids"].shape[1]:]
    decoded = processor.batch_decode(replies, skip_special_tokens=True)
    # The streamer's first put() is the prompt; each later one is a step's new tokens.
    return {"stamps": [start, *clock.stamps[1:]], "texts": decoded}


def summarise(stamps: list[float], batch: int) -> tuple[float, float]:
    """(time to first token in s, decode tokens/s over the later steps, all rows counted)."""
    ttft = stamps[1] - stamps[0]
    steps = len(stamps) - 2
    decode = batch * steps / (stamps[-1] - stamps[1]) if steps > 0 else float("nan")
    return ttft, decode


def timed(fns: dict, batch: int, repeats: int) -> dict[str, dict]:
    """Median TTFT and decode speed of each function, run alternately so that load on the machine hits both."""
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, kernel choices and lazy imports
    samples: dict[str, list] = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            results[name] = fn()
            samples[name].append(summarise(results[name]["stamps"], batch))
    return {name: {"ttft": statistics.median(t for t, _ in samples[name]),
                   "decode": statistics.median(d for _, d in samples[name]),
                   "texts": results[name]["texts"], "steps": len(results[name]["stamps"]) - 1}
            for name in fns}


def peak_memory(side: str, folder: str, dtype: str, batch: int, new_tokens: int, queue) -> None:
    """In a fresh process: load one side, then the peak resident memory of one generation above that level."""
    torch_dtype = getattr(torch, dtype)
    if side == "minillava":
        from minillava.model import MiniLlava

        model = MiniLlava.from_pretrained(Path(folder) / "ours", dtype=torch_dtype).eval()
        fn = lambda: run_ours(model, batch, new_tokens)  # noqa: E731
    else:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(Path(folder) / "hf", dtype=torch_dtype).eval()
        processor = AutoProcessor.from_pretrained(Path(folder) / "hf")
        processor.tokenizer.padding_side = "left"
        fn = lambda: run_theirs(model, processor, batch, new_tokens)  # noqa: E731
    with torch.no_grad():  # page in the weights (safetensors are memory-mapped) so that only generation counts
        for p in model.parameters():
            p.sum()
    images(batch)
    with PeakMemory() as memory:
        fn()
    queue.put(memory.above_base_mb)


def measure_memory(side: str, folder: Path, dtype: str, batch: int, new_tokens: int) -> float:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=peak_memory, args=(side, str(folder), dtype, batch, new_tokens, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--profile", action="store_true", help="print torch profiler tables of one run each")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs, processor = build(Path(tmp), dtype)
        print(f"CLIP-B/32-sized random tower + SmolLM2-135M-Instruct, {args.dtype}, {torch.get_num_threads()} "
              f"threads, greedy, up to {args.new_tokens} new tokens, median of {args.repeats}")
        print(f"{'batch':>5} {'':>12} {'TTFT s':>8} {'decode tok/s':>13} {'peak MB':>8} {'steps':>6}")
        for batch in args.batches:
            r = timed({"minillava": lambda b=batch: run_ours(ours, b, args.new_tokens),
                       "transformers": lambda b=batch: run_theirs(theirs, processor, b, args.new_tokens)},
                      batch, args.repeats)
            for name in r:
                r[name]["peak"] = measure_memory(name, Path(tmp), args.dtype, batch, args.new_tokens)
                print(f"{batch:>5} {name:>12} {r[name]['ttft']:>8.3f} {r[name]['decode']:>13.1f} "
                      f"{r[name]['peak']:>8.0f} {r[name]['steps']:>6}")
            a, b = r["minillava"], r["transformers"]
            same = a["texts"] == b["texts"]
            print(f"{batch:>5} {'ours/theirs':>12} {a['ttft'] / b['ttft']:>7.2f}x {a['decode'] / b['decode']:>12.2f}x "
                  f"{a['peak'] / max(b['peak'], 1):>7.2f}x   same text: {same}")
            if not same:
                print(f"      first differing reply: ours {a['texts'][0][:60]!r} / theirs {b['texts'][0][:60]!r}")
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                for name, fn in (("minillava", lambda b=batch: run_ours(ours, b, args.new_tokens)),
                                 ("transformers", lambda b=batch: run_theirs(theirs, processor, b, args.new_tokens))):
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        fn()
                    print(f"--- {name}, batch {batch}")
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
