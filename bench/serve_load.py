"""Load test for `minillava serve`: sequential requests against N concurrent clients on the same server.

    python bench/serve_load.py                      # a tiny random model built on the fly
    python bench/serve_load.py --model /tmp/m       # a folder from `minillava init --out /tmp/m`

Every request streams (SSE) a greedy reply about an image sent as a data URL. Prints requests/s, reply
tokens/s, latency and time-to-first-token percentiles, the server's mean batch size, and the batching gain
(requests/s over the sequential run's). Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image


def build_tiny_model(root: Path) -> Path:
    """The embedded tiny-clip tower and tiny-llama (SmolLM2's tokenizer, random weights), as recipes/tiny.yaml."""
    from minillava.model import MiniLlava

    MiniLlava.from_components("tiny-clip", "tiny-llama").save_pretrained(root / "model")
    return root / "model"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, max_batch_size: int, dtype: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "minillava", "serve", "--model", str(model), "--port", str(port),
               "--served-model-name", "bench", "--max-batch-size", str(max_batch_size), "--max-queue", "1024",
               "--dtype", dtype, "--log-level", "warning"]
    process = subprocess.Popen(command, env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def image_urls() -> list[str]:
    urls = []
    for colour in ((200, 30, 30), (30, 160, 40), (20, 40, 210), (230, 200, 40)):
        buffer = io.BytesIO()
        Image.new("RGB", (96, 72), colour).save(buffer, "PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


QUESTIONS = ["What colour is this picture?", "Describe the image in one sentence.", "Is there anything in it?",
             "What would you call this colour?", "Write a short caption for it."]


@dataclass
class Result:
    ok: bool
    latency: float
    first_token: float
    tokens: int
    error: str = ""


async def one_request(client: httpx.AsyncClient, url: str, index: int, images: list[str], max_tokens: int,
                      text_only: bool) -> Result:
    content = [{"type": "text", "text": f"{QUESTIONS[index % len(QUESTIONS)]} (#{index})"}]
    if not text_only:
        content.insert(0, {"type": "image_url", "image_url": {"url": images[index % len(images)]}})
    body = {"model": "bench", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens, done = 0.0, 0, False
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                return Result(False, 0, 0, 0, f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0]["delta"].get("content") and not first:
                    first = time.perf_counter() - start
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as err:
        return Result(False, 0, 0, 0, repr(err))
    return Result(done, time.perf_counter() - start, first, tokens, "" if done else "no [DONE]")


async def run_phase(base: str, clients: int, requests: int, images: list[str], max_tokens: int,
                    text_only: bool) -> tuple[list[Result], float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    pending = iter(range(requests))
    results: list[Result] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        async def worker() -> None:
            for index in pending:
                results.append(await one_request(client, f"{base}/v1/chat/completions", index, images, max_tokens,
                                                 text_only))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def health(base: str) -> dict:
    return httpx.get(f"{base}/health", timeout=10).json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: a tiny random one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrent phase")
    parser.add_argument("--sequential", type=int, default=16, help="requests in the one-at-a-time phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--text-only", action="store_true", help="no image in the requests")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_tiny_model(Path(scratch))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(model, port, args.max_batch_size, args.dtype)
        try:
            images = image_urls()
            asyncio.run(run_phase(base, 2, 2, images, 4, args.text_only))  # warm-up
            phases = [("sequential", 1, args.sequential)] + [(f"{n} clients", n, args.requests) for n in args.clients]
            print(f"model: {args.model or 'tiny random (tiny-clip + tiny-llama)'}; "
                  f"{args.max_tokens} greedy tokens per request, streamed; "
                  f"{'text only' if args.text_only else 'one image per request'}; batches of up to "
                  f"{args.max_batch_size}; {os.cpu_count()} CPU cores")
            print(f"{'phase':<12} {'ok':>7} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} "
                  f"{'TTFT p50':>9} {'batch':>6} {'gain':>6}")
            failed, baseline = 0, None
            for name, clients, requests in phases:
                before = health(base)
                results, seconds = asyncio.run(run_phase(base, clients, requests, images, args.max_tokens,
                                                         args.text_only))
                after = health(base)
                good = [r for r in results if r.ok]
                failed += len(results) - len(good)
                for bad in [r for r in results if not r.ok][:3]:
                    print(f"  failed: {bad.error}")
                rate = len(good) / seconds
                baseline = baseline or rate
                batches = after["batches"] - before["batches"]
                rows = after["mean_batch_size"] * after["batches"] - before["mean_batch_size"] * before["batches"]
                latencies = [r.latency for r in good]
                print(f"{name:<12} {len(good):>3}/{len(results):<3} {rate:>7.2f} "
                      f"{sum(r.tokens for r in good) / seconds:>8.1f} {percentile(latencies, 50):>7.2f} "
                      f"{percentile(latencies, 90):>7.2f} {percentile(latencies, 99):>7.2f} "
                      f"{statistics.median([r.first_token for r in good]) if good else float('nan'):>9.2f} "
                      f"{rows / max(1, batches):>6.1f} {rate / baseline:>5.1f}x")
            print("every request succeeded" if not failed else f"{failed} requests FAILED")
            return 1 if failed else 0
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
