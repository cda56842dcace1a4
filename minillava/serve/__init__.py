"""Serving: an OpenAI-compatible API with dynamic batching, a terminal chat and a web UI.

Entry points load lazily, so that the web UI talking to a remote server never imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ServeConfig": "minillava.serve.config",
    "create_app": "minillava.serve.app",
    "serve": "minillava.serve.server",
    "BackgroundServer": "minillava.serve.server",
    "Batcher": "minillava.serve.batcher",
    "ChatSession": "minillava.serve.chat",
    "RemoteChat": "minillava.serve.backends",
    "LocalChat": "minillava.serve.backends",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minillava.serve' has no attribute {name!r}")
