"""Check a data file before training: every sample parses and every image opens, no model loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .conversation import Conversation, SampleError, Video
from .formats import check_format_name, parse_record, read_records, record_id
from .images import DEFAULT_MAX_PIXELS, ImageError, load_image
from .video import load_frames

CHECKED_FRAMES = 8  # frames of each video decoded by the check (spread evenly, as training samples them)


def check_images(
    conv: Conversation, max_pixels: int = DEFAULT_MAX_PIXELS, *, image_root: str | Path | None = None
) -> None:
    """Open every image of `conv` fully and decode frames of every video; SampleError if one is missing,
    unreadable or too large.

    `image_root` only shortens the paths shown in messages.
    """
    for number, image in enumerate(conv.images, start=1):
        video = isinstance(image, Video)
        path = image.source if video else image
        kind = "video" if video else "image"
        name = _display_name(path, number, image_root)
        if isinstance(path, str | Path) and not Path(path).exists():
            raise SampleError(f"{kind} {name!r} not found", sample_id=conv.id)
        try:
            if video:
                load_frames(image, image.frames or CHECKED_FRAMES, max_pixels=max_pixels)
            else:
                load_image(image, max_pixels=max_pixels)
        except ImageError as err:
            detail = str(err).removeprefix(f"{path}: ")  # the loaders name the full path; we show `name`
            raise SampleError(f"{kind} {name!r}: {detail}", sample_id=conv.id) from None


@dataclass
class CheckReport:
    path: str
    total: int
    errors: list[SampleError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> list[dict[str, Any]]:
        return [{"index": e.index, "id": e.sample_id, "reason": e.reason} for e in self.errors]


def check_file(
    path: str | Path,
    image_root: str | Path | None = None,
    fmt: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    show_progress: bool = False,
) -> CheckReport:
    """Parse every record of a data file and open its images; one error per bad sample."""
    check_format_name(fmt)
    root = Path(path).parent if image_root is None else Path(image_root)
    records = read_records(path)
    errors: list[SampleError] = []
    for index, record in enumerate(tqdm(records, desc=f"checking {path}", disable=not show_progress)):
        try:
            conv = parse_record(record, fmt, root, source=str(path), index=index)
            check_images(conv, max_pixels, image_root=root)
        except SampleError as err:
            # check_images knows only the sample; add where it is in the file.
            errors.append(SampleError(err.reason, source=str(path), index=index, sample_id=record_id(record)))
    return CheckReport(path=str(path), total=len(records), errors=errors)


def _display_name(image: Any, number: int, image_root: str | Path | None) -> str:
    if not isinstance(image, str | Path):
        return f"#{number}"  # in-memory images (bytes, PIL) have no path to show
    if image_root is not None:
        root = Path(image_root).resolve()
        if Path(image).is_relative_to(root):
            return Path(image).relative_to(root).as_posix()
    return str(image)
