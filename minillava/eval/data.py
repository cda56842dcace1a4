"""Evaluation samples from a JSONL file or a JSON list.

A sample: `id`, `image` (a path relative to the image root, or absolute; may be absent for text-only
questions) or `video` (a video file or a folder of frames, likewise), `question`, `answers` (list) or `answer`,
`choices` (multiple choice), optional `kind`; other keys
are kept and copied into the predictions. LLaVA-format records (`conversations`) also work: the first human
turn is the question and the first gpt turn the answer, so a training data file doubles as evaluation data.
"""

from __future__ import annotations

from pathlib import Path

from minillava.data.conversation import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from minillava.data.formats import InvalidLine, read_records

_HUMAN, _GPT = ("human", "user"), ("gpt", "assistant")


def _from_conversations(record: dict) -> dict:
    turns = record.get("conversations") or []
    human = next((t.get("value", "") for t in turns if t.get("from") in _HUMAN), "")
    gpt = next((t.get("value") for t in turns if t.get("from") in _GPT), None)
    sample = {k: v for k, v in record.items() if k != "conversations"}
    sample.setdefault("question", human.replace(IMAGE_PLACEHOLDER, "").replace(VIDEO_PLACEHOLDER, "").strip())
    if gpt is not None and "answer" not in sample and "answers" not in sample:
        sample["answer"] = gpt
    return sample


def normalize_sample(record: dict, index: int, image_root: Path | None) -> dict:
    """One record as an evaluation sample: string id, question text, image path resolved against the root."""
    sample = _from_conversations(record) if "conversations" in record else dict(record)
    sample["id"] = str(sample.get("id", index))
    image = sample.get("image")
    if isinstance(image, list):
        if len(image) != 1:
            raise ValueError(f"{len(image)} images; evaluation takes one image per sample")
        image = image[0]
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_absolute() and image_root is not None:
            path = image_root / path
        if not path.is_file():
            raise ValueError(f"image {str(path)!r} not found (set --image-root to the folder the paths start from)")
        image = str(path)
    if image is not None:
        sample["image"] = image
    video = sample.get("video")
    if video is not None:
        if image is not None or not isinstance(video, str):
            raise ValueError("a sample takes one image or one video, as a path string")
        path = Path(video)
        if not path.is_absolute() and image_root is not None:
            path = image_root / path
        if not path.exists():
            raise ValueError(f"video {str(path)!r} not found (set --image-root to the folder the paths start from)")
        sample["video"] = str(path)
    return sample


def load_samples(path: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Read and check samples; image paths are relative to `image_root` (default: the data file's folder)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records = read_records(path)
    if limit is not None:
        records = records[:limit]
    samples = []
    for index, record in enumerate(records):
        where = f"{path}[{index}]"
        if isinstance(record, InvalidLine):
            raise ValueError(f"{path}: line {record.line}: {record.message}")
        if not isinstance(record, dict):
            raise ValueError(f"{where}: a sample must be a JSON object, got {type(record).__name__}")
        try:
            samples.append(normalize_sample(record, index, root))
        except ValueError as error:
            raise ValueError(f"{where} (id {str(record.get('id', index))!r}): {error}") from None
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_paths(source: str | Path, limit: int | None = None, image_root: str | Path | None = None) -> list[str]:
    """The images of a set: an image file, a folder (image files at any depth, sorted), or a data file
    (the distinct `image` paths of its records, in order)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix.lower() in (".json", ".jsonl"):
        seen = dict.fromkeys(str(s["image"]) for s in load_samples(source, image_root) if s.get("image"))
        paths = list(seen)
    elif source.is_file():
        paths = [str(source)]
    else:
        raise FileNotFoundError(f"image set {str(source)!r} not found")
    if not paths:
        raise ValueError(f"{source}: no images found")
    return paths[:limit] if limit is not None else paths
