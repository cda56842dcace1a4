"""Videos as frames: decoding (PyAV), even sampling, and each video's plan (its frames as views, tokens pooled).

A video becomes `n` frames spread evenly over it, the first and the last included (as LLaVA-Video samples): a
question about motion needs both ends. Each frame is one view at the tower's size, and its grid of projected
tokens can shrink by `pool` per side (bilinear, as LLaVA-OneVision pools video frames), so that eight frames
cost about what two images do. The plan is made from the container's header (or the folder's listing) alone;
the frames are decoded only when the pixels are needed.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from minillava.data.conversation import Video
from minillava.data.image_plan import ImagePlan
from minillava.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image

FRAME_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})  # files a frame folder's frames are
Resolution = tuple[int, int]


class VideoError(ImageError):
    """A video that cannot be used: missing, not a video, undecodable, without frames, or asking too many."""


class TooManyFrames(VideoError):
    """A video asks for more frames than the model's video.max_frames."""


def sample_indices(total: int, n: int) -> list[int]:
    """`n` frame indices spread evenly over `total` frames, first and last included (all of them when n >= total)."""
    if total < 1 or n < 1:
        raise ValueError(f"cannot sample {n} of {total} frames")
    if n >= total:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, n).round()]


def frame_count(video: Video) -> int:
    """The frames the video holds, from the container's header or the folder's listing, without decoding."""
    if _is_folder(video):
        return len(_frame_files(video))
    with _open_container(video) as container:
        stream = _video_stream(container, video)
        if stream.frames > 0:
            return int(stream.frames)
        # Some containers (WebM, MKV) do not record a frame count: count the stream's packets, still undecoded.
        return sum(1 for packet in container.demux(stream) if packet.size)


def load_frames(video: Video, n: int, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """`n` evenly spread RGB frames of the video (fewer only if it holds fewer), each a new PIL image."""
    if _is_folder(video):
        files = _frame_files(video)
        return [load_image(files[i], max_pixels=max_pixels) for i in sample_indices(len(files), n)]
    total = frame_count(video)
    frames = _decode(video, sample_indices(total, n), max_pixels)
    if len(frames) < min(n, total):
        # The header promised frames the stream does not hold: sample again over the frames that decode.
        decoded = _decode(video, None, max_pixels, count_only=True)
        if not decoded:
            raise VideoError(f"{video.name}: no frame decodes")
        frames = _decode(video, sample_indices(decoded, n), max_pixels)
    return frames


def write_video(path: str | Path, frames: Sequence[Image.Image], fps: int = 8) -> Path:
    """Encode frames (all one size, even sides) as an H.264 MP4, e.g. for synthetic data and tests."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = frames[0].size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}  # near-lossless: small shapes keep their colours
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame.convert("RGB"))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# -- plans ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePooling:
    """A video's layout: per frame, its prefix tokens (a kept CLS) and its token grid shrunk by `pool` per side."""

    frames: int
    grid: Resolution  # rows, columns of one frame's projected token grid
    pool: int

    @property
    def pooled(self) -> Resolution:
        return math.ceil(self.grid[0] / self.pool), math.ceil(self.grid[1] / self.pool)

    def num_tokens(self, tokens_per_view: int) -> int:
        prefix = tokens_per_view - self.grid[0] * self.grid[1]
        return self.frames * (prefix + self.pooled[0] * self.pooled[1])

    def arrange(self, features: torch.Tensor, image_newline: torch.Tensor | None) -> torch.Tensor:
        frames, tokens, width = features.shape
        rows, cols = self.grid
        prefix, grid = features[:, : tokens - rows * cols], features[:, tokens - rows * cols:]
        grid = grid.reshape(frames, rows, cols, width).permute(0, 3, 1, 2)
        pooled = F.interpolate(grid.float(), self.pooled, mode="bilinear").to(features.dtype)
        pooled = pooled.flatten(2).transpose(1, 2)  # (frames, pooled rows * cols, width)
        return torch.cat([prefix, pooled], dim=1).flatten(0, 1)


@dataclass(frozen=True)
class VideoPlanner:
    """Plans a video as its sampled frames, one view each; `grid` None: the tokens form no grid (no pooling)."""

    frames: int  # frames sampled when a video names none
    max_frames: int  # the most one video may ask for
    pool: int  # per side; 1 keeps every token
    tokens_per_view: int  # projected features of one frame
    grid: Resolution | None

    def plan(self, video: Video) -> ImagePlan:
        asked = video.frames or self.frames
        if asked > self.max_frames:
            raise TooManyFrames(f"{video.name}: {asked} frames asked for, more than this model's video.max_frames "
                             f"({self.max_frames})")
        total = frame_count(video)
        if total < 1:
            raise VideoError(f"{video.name}: the video holds no frames")
        n = min(asked, total)
        if self.pool == 1:
            return ImagePlan(views=n, tokens=n * self.tokens_per_view)
        if self.grid is None:
            raise VideoError(f"{video.name}: video.pool {self.pool} shrinks a frame's token grid, and this model's "
                             "tokens form none (a kept CLS token or a projector that reorders them); set pool 1")
        layout = FramePooling(n, self.grid, self.pool)
        return ImagePlan(views=n, tokens=layout.num_tokens(self.tokens_per_view), layout=layout)


# -- decoding -------------------------------------------------------------------------------------------------


def _is_folder(video: Video) -> bool:
    return isinstance(video.source, str | Path) and Path(video.source).is_dir()


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _frame_files(video: Video) -> list[Path]:
    folder = Path(video.source)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()),
                   key=_natural_key)
    if not files:
        raise VideoError(f"{video.name}: a frame folder, but it holds no frame images "
                         f"({', '.join(sorted(FRAME_SUFFIXES))})")
    return files


def _open_container(video: Video):
    try:
        import av
    except ImportError:
        raise VideoError(f"{video.name}: decoding video files needs PyAV (pip install av); a folder of frame "
                         "images needs nothing more") from None
    source = video.source
    if isinstance(source, str | Path) and not Path(source).exists():
        raise VideoError(f"{video.name}: no such file")
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{video.name}: not a video, or a format PyAV cannot read: {err}") from None


def _video_stream(container, video: Video):
    if not container.streams.video:
        raise VideoError(f"{video.name}: the file holds no video stream")
    return container.streams.video[0]


def _decode(video: Video, indices: list[int] | None, max_pixels: int | None, count_only: bool = False):
    """The frames at `indices` in order (None with count_only: how many frames decode)."""
    import av

    wanted = set(indices or ())
    frames: list[Image.Image] = []
    decoded = 0
    with _open_container(video) as container:
        stream = _video_stream(container, video)
        width, height = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise VideoError(f"{video.name}: {width} x {height} = {width * height} pixels a frame is over the "
                             f"limit of {max_pixels}")
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index in wanted:
                    frames.append(frame.to_image())
                if not count_only and len(frames) == len(wanted):
                    break
        except (av.FFmpegError, OSError, ValueError) as err:
            if not count_only and len(frames) < len(wanted):
                raise VideoError(f"{video.name}: corrupt video data after {decoded} frames: {err}") from None
    return decoded if count_only else [frame.convert("RGB") for frame in frames]
