"""Load a model folder and serve it with uvicorn."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from minillava.serve.config import ServeConfig

log = logging.getLogger(__name__)


def serve(model_dir: str | Path, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
          dtype: torch.dtype = torch.float32, shutdown_timeout_s: float = 30.0, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then running requests get up to shutdown_timeout_s to finish."""
    import uvicorn

    from minillava.model import MiniLlava
    from minillava.serve.app import create_app

    model = MiniLlava.from_pretrained(model_dir, dtype=dtype).eval()
    app = create_app(model, config)
    log.info("serving %s as %r on http://%s:%d/v1 (%d tokens per image, batches of up to %d)", model_dir,
             config.model_name, host, port, model.tokens_per_image, config.max_batch_size)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout_s)


class BackgroundServer:
    """Run an ASGI app with uvicorn on a background thread: `with BackgroundServer(app) as server: server.url`.

    For notebooks, tests and benchmarks. port=0 picks a free port. stop() shuts down as SIGTERM would: open
    requests get up to shutdown_timeout_s to finish.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, shutdown_timeout_s: float = 30.0,
                 log_level: str = "warning"):
        import socket

        import uvicorn

        self.host = host
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="minillava-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
