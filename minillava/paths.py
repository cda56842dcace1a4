"""Where minillava keeps converted embedded weights."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MINILLAVA_CACHE, else $XDG_CACHE_HOME/minillava, else ~/.cache/minillava."""
    if env := os.environ.get("MINILLAVA_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "minillava"
