"""The GGUF export in llama.cpp (through llama-cpp-python) against minillava, on the same model, image and prompt.

A B/32-sized random SigLIP tower (224 px, 49 tokens per image; `--tower clip` for CLIP, whose image tokens
llama.cpp's LLaVA graph computes differently: docs/interop.md) + the embedded SmolLM2-135M-Instruct, exported with
`minillava export --format gguf --quant f16 q8_0 q4_k_m`. Each side answers the same question about the same
image, greedy, from the PIL image and the text (image encoding included), alternately, a few times. Prints the
files' size on disk, the median time to first token and decode tokens/s, and the ratios to minillava float32:

    python bench/gguf_llamacpp.py [--tower siglip|clip] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from generate_vs_hf import clip_b32_model, images, summarise

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
QUESTION = "Describe the image in detail."
QUANTS = ("f16", "q8_0", "q4_k_m")


def run_ours(model, image, new_tokens: int) -> dict:
    from minillava.model import GenerationConfig, build_prompt

    start = time.perf_counter()
    run = model.stream([build_prompt(QUESTION, [image])], GenerationConfig(max_new_tokens=new_tokens))
    stamps = [time.perf_counter() for _ in run]
    return {"stamps": [start, *stamps], "text": run.results[0].text}


def run_llama_cpp(llm, image, new_tokens: int) -> dict:
    from minillava.export.llamacpp.runtime import image_data_uri

    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_uri(image)}},
                                             {"type": "text", "text": QUESTION}]}]
    start = time.perf_counter()
    stamps, text = [], []
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=new_tokens, stream=True, temperature=0.0,
                                            top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        piece = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
        if piece:
            stamps.append(time.perf_counter())
            text.append(piece)
    return {"stamps": [start, *stamps], "text": "".join(text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tower", choices=["siglip", "clip"], default="siglip")
    args = parser.parse_args()

    from minillava.export.llamacpp import export_gguf
    from minillava.export.llamacpp.runtime import load

    image = images(1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = clip_b32_model(Path(tmp), args.tower).eval()
        start = time.perf_counter()
        report = export_gguf(model, Path(tmp) / "gguf", quants=QUANTS)
        seconds = time.perf_counter() - start
        print(f"export (f16 written, q8_0 / q4_k_m quantized by llama.cpp, checked): {seconds:.0f} s")
        sides = {"minillava float32": (lambda: run_ours(model, image, args.new_tokens))}
        bf16 = clip_b32_model(Path(tmp) / "bf16", args.tower).to(torch.bfloat16).eval()
        sides["minillava bfloat16"] = lambda: run_ours(bf16, image, args.new_tokens)
        sizes = {"minillava float32": sum(p.numel() * 4 for p in model.parameters()),
                 "minillava bfloat16": sum(p.numel() * 2 for p in model.parameters())}
        llms = {}
        for quant in QUANTS:
            llms[quant] = load(report.folder, quant, n_ctx=512)
            name = f"llama.cpp {quant}"
            sides[name] = lambda q=quant: run_llama_cpp(llms[q], image, args.new_tokens)
            sizes[name] = report.models[quant]["bytes"] + report.mmproj_bytes
        samples: dict[str, list] = {name: [] for name in sides}
        texts = {}
        for run in sides.values():
            run()  # warm-up
        for _ in range(args.repeats):
            for name, run in sides.items():
                result = run()
                samples[name].append(summarise(result["stamps"], 1))
                texts[name] = result["text"]
        print(f"{args.tower} B/32-sized random tower + SmolLM2-135M-Instruct, {torch.get_num_threads()} threads, "
              f"one image, greedy, up to {args.new_tokens} new tokens, median of {args.repeats}; sizes: weights "
              f"on disk (llama.cpp: model + mmproj f16)")
        base = {"ttft": statistics.median(t for t, _ in samples["minillava float32"]),
                "decode": statistics.median(d for _, d in samples["minillava float32"])}
        print(f"{'':>20} {'size MB':>8} {'TTFT s':>8} {'x':>6} {'decode tok/s':>13} {'x':>6}  same text as fp32")
        for name in sides:
            ttft = statistics.median(t for t, _ in samples[name])
            decode = statistics.median(d for _, d in samples[name])
            same = texts[name].strip() == texts["minillava float32"].strip()
            print(f"{name:>20} {sizes[name] / 1e6:8.1f} {ttft:8.3f} {base['ttft'] / ttft:6.2f} {decode:13.1f} "
                  f"{decode / base['decode']:6.2f}  {same}")
        for name, text in texts.items():
            print(f"{name}: {text[:100]!r}")


if __name__ == "__main__":
    main()
