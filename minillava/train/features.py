"""An on-disk cache of a frozen vision encoder's outputs, so later epochs (and stages) skip the encoder.

The cache is a numpy memmap of shape (images, tokens, width) beside a JSON index of image keys. A key is the
image file's resolved path, size and modification time, so an edited image is encoded again. The cache belongs to
one encoder, its weights and one preprocessing (its fingerprint); a cache made by another is rebuilt, never
misread. A new cache takes the features it shares with earlier caches of the same fingerprint (the earlier
stages' of a run), so stage 2 does not encode again the images stage 1 saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
DTYPES = {"float16": np.float16, "float32": np.float32}
INDEX = "index.json"
FEATURES = "features.npy"
FILLED = "filled.npy"


def image_key(source) -> str | None:
    """A stable identity of an image file; None for in-memory images, which are never cached."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source).resolve()
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


class FeatureCache:
    def __init__(self, folder: str | Path, images: Iterable, fingerprint: dict, shape: tuple[int, int],
                 dtype: str = "float16", writer: bool = True, seeds: Sequence[str | Path] = ()):
        """`images` are all image sources the run may ask for; `writer` is False on ranks that only read the
        files the main rank created; `seeds` are other cache folders a new cache copies matching rows from."""
        if dtype not in DTYPES:
            raise ValueError(f"feature cache dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        self.folder = Path(folder)
        keys = sorted({k for k in (_safe_key(s) for s in images) if k is not None})
        self.rows = {key: row for row, key in enumerate(keys)}
        index = {"fingerprint": fingerprint, "shape": list(shape), "dtype": dtype, "keys": keys}
        if writer and not self._matches(index):
            if self.folder.exists():
                log.info("feature cache %s: made for other images or another encoder; rebuilding", self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            np.lib.format.open_memmap(self.folder / FEATURES, "w+", DTYPES[dtype], (max(1, len(keys)), *shape)).flush()
            np.lib.format.open_memmap(self.folder / FILLED, "w+", np.bool_, (max(1, len(keys)),)).flush()
            self._seed(index, seeds)
            tmp = self.folder / f"{INDEX}.tmp"
            tmp.write_text(json.dumps(index))
            os.replace(tmp, self.folder / INDEX)  # the index last: a cache without one is incomplete
        self.features = np.load(self.folder / FEATURES, mmap_mode="r+")
        self.filled = np.load(self.folder / FILLED, mmap_mode="r+")
        self.hits = self.misses = 0

    def _seed(self, index: dict, seeds: Sequence[str | Path]) -> None:
        """Copy into the new (empty) files the filled rows of complete seed caches made with the same
        fingerprint, shape and dtype."""
        features = np.load(self.folder / FEATURES, mmap_mode="r+")
        filled = np.load(self.folder / FILLED, mmap_mode="r+")
        for seed in map(Path, seeds):
            try:
                theirs = json.loads((seed / INDEX).read_text())
            except (OSError, ValueError):
                continue
            if any(theirs.get(k) != index[k] for k in ("fingerprint", "shape", "dtype")):
                continue
            their_filled = np.load(seed / FILLED, mmap_mode="r")
            pairs = [(self.rows[key], row) for row, key in enumerate(theirs["keys"])
                     if key in self.rows and their_filled[row] and not filled[self.rows[key]]]
            if not pairs:
                continue
            ours, rows = map(list, zip(*pairs, strict=True))
            features[ours] = np.load(seed / FEATURES, mmap_mode="r")[rows]
            features.flush()  # values before the flags, as in get()
            filled[ours] = True
            filled.flush()
            log.info("feature cache %s: %d of %d images taken from %s", self.folder, len(pairs), len(self.rows), seed)

    def _matches(self, index: dict) -> bool:
        path = self.folder / INDEX
        try:
            return json.loads(path.read_text()) == index
        except (OSError, ValueError):
            return False

    def __len__(self) -> int:
        return int(self.filled.sum())

    def get(self, images: Sequence, encode: Callable[[Sequence], torch.Tensor]) -> torch.Tensor:
        """Features of one sample's images, (n, tokens, width); images not yet cached go through `encode`."""
        keys = [image_key(s) for s in images]
        rows = [self.rows.get(k) for k in keys]
        missing = [i for i, row in enumerate(rows) if row is None or not self.filled[row]]
        # Fresh values go through the storage dtype too, so a feature reads the same before and after caching.
        fresh = {}
        if missing:
            self.misses += len(missing)
            computed = encode([images[i] for i in missing]).float().cpu().numpy().astype(self.features.dtype)
            fresh = dict(zip(missing, computed, strict=True))
            stored = [i for i in missing if rows[i] is not None]
            for i in stored:
                self.features[rows[i]] = fresh[i]
            if stored:
                self.features.flush()  # the values reach the file before the flags that say they are there
                self.filled[[rows[i] for i in stored]] = True
                self.filled.flush()
        self.hits += len(images) - len(missing)
        out = [fresh[i] if i in fresh else self.features[row] for i, row in enumerate(rows)]
        return torch.from_numpy(np.stack(out).astype(np.float32))


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers: caches of two encoders with equal configurations but
    different weights (a fine-tuned one) must not mix."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _safe_key(source) -> str | None:
    try:
        return image_key(source)
    except OSError:
        return None  # a missing image is reported (and skipped) when the batch is made
