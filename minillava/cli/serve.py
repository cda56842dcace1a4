"""`minillava serve`: an OpenAI-compatible chat completions server."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from minillava.cli.model import DTYPES


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a model folder with the OpenAI chat completions API")
    serve.add_argument("--model", required=True, help="a model folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None, help="the model id clients use (default: folder name)")
    serve.add_argument("--api-key", default=os.environ.get("MINILLAVA_API_KEY"),
                       help="require 'Authorization: Bearer KEY' (default: $MINILLAVA_API_KEY; none: open)")
    serve.add_argument("--allowed-local-media-path", type=Path, default=None,
                       help="allow file:// image URLs and plain paths, only below this folder")
    serve.add_argument("--allow-remote-images", action="store_true", help="allow http(s) image URLs")
    serve.add_argument("--remote-timeout", type=float, default=5.0, help="seconds to fetch a remote image")
    serve.add_argument("--max-images-per-prompt", type=int, default=4)
    serve.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024)
    serve.add_argument("--max-image-pixels", type=int, default=50_000_000)
    serve.add_argument("--max-videos-per-prompt", type=int, default=1, help="video_url parts per request; 0: none")
    serve.add_argument("--max-video-bytes", type=int, default=50 * 1024 * 1024)
    serve.add_argument("--max-queue", type=int, default=128, help="waiting requests; more get HTTP 429")
    serve.add_argument("--max-batch-size", type=int, default=16, help="requests generated together")
    serve.add_argument("--batch-wait-ms", type=float, default=10.0,
                       help="how long the model worker waits for more requests to fill a batch")
    serve.add_argument("--max-model-len", type=int, default=None,
                       help="prompt + reply tokens (default: the language model's limit)")
    serve.add_argument("--default-max-tokens", type=int, default=256, help="for requests that name none")
    serve.add_argument("--default-temperature", type=float, default=1.0, help="for requests that name none")
    serve.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds running requests get to finish after SIGINT/SIGTERM")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from minillava.serve.config import ServeConfig
    from minillava.serve.server import serve

    if args.allowed_local_media_path is not None and not args.allowed_local_media_path.is_dir():
        raise FileNotFoundError(f"--allowed-local-media-path {args.allowed_local_media_path}: no such folder")
    config = ServeConfig(
        model_name=args.served_model_name or Path(args.model).resolve().name,
        api_key=args.api_key or None,
        allowed_local_media_path=args.allowed_local_media_path,
        allow_remote_images=args.allow_remote_images,
        remote_timeout_s=args.remote_timeout,
        max_images_per_prompt=args.max_images_per_prompt,
        max_image_bytes=args.max_image_bytes,
        max_videos_per_prompt=args.max_videos_per_prompt,
        max_video_bytes=args.max_video_bytes,
        max_image_pixels=args.max_image_pixels,
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
        max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens,
        default_temperature=args.default_temperature,
    )
    serve(args.model, config, host=args.host, port=args.port, dtype=DTYPES[args.dtype],
          shutdown_timeout_s=args.shutdown_timeout, log_level=args.log_level)
    return 0
