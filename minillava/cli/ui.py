"""`minillava ui`: the Streamlit web UI, against a running server or a model loaded in-process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

API_KEY_ENV = "MINILLAVA_UI_API_KEY"
APP = Path(__file__).resolve().parent.parent / "serve" / "ui_app.py"


def add_commands(commands: argparse._SubParsersAction) -> None:
    ui = commands.add_parser("ui", help="the web UI: drop an image and chat about it")
    ui.add_argument("--server", default="http://127.0.0.1:8000/v1",
                    help="an OpenAI-compatible server's base URL, e.g. from `minillava serve`")
    ui.add_argument("--api-key", default=None, help=f"the server's API key (default: ${API_KEY_ENV})")
    ui.add_argument("--model", default=None, help="load this model folder in the UI's process instead of a server")
    ui.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ui.add_argument("--host", default="127.0.0.1", help="where the UI listens")
    ui.add_argument("--port", type=int, default=8501)
    ui.set_defaults(run=run_ui)


def streamlit_command(args: argparse.Namespace) -> list[str]:
    app_args = ["--server", args.server, "--dtype", args.dtype]
    if args.model:
        app_args += ["--model", str(Path(args.model).resolve())]
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", args.host,
            "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal", "--", *app_args]


def run_ui(args: argparse.Namespace) -> int:
    if args.model and not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model}: no such folder")
    print(f"minillava ui on http://{args.host}:{args.port} "
          f"({'model ' + args.model if args.model else 'server ' + args.server})", flush=True)
    # The key travels in the environment, not on a command line other users can read.
    env = {**os.environ, API_KEY_ENV: args.api_key or os.environ.get(API_KEY_ENV, "")}
    process = subprocess.Popen(streamlit_command(args), env=env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so that `finally` stops streamlit
    try:
        return process.wait()
    except KeyboardInterrupt:
        return process.wait()  # streamlit got the same Ctrl-C and shuts down on its own
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
