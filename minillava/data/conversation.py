"""The one conversation type every data format is read into."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"  # in data files and chat text; read as an IMAGE_PLACEHOLDER standing for a video

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# "chat": rendered with the language model's chat template.
# "plain": LLaVA-Pretrain style, the prompt is the image(s) alone and the target the caption.
Template = Literal["chat", "plain"]



@dataclass(frozen=True)
class Video:
    """A video: a file (any container PyAV decodes), its encoded bytes, or a folder of frame images in name order.

    It is sampled to `frames` frames spread evenly over it (None: the model's `video.frames`); each frame is one
    view of the vision encoder. In a conversation a video fills one `<image>` marker, like an image.
    """

    source: str | Path | bytes
    frames: int | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"a video is sampled to at least 1 frame, not {self.frames}")

    @property
    def name(self) -> str:
        return "<video bytes>" if isinstance(self.source, bytes) else str(self.source)


# What a conversation's `images` hold, in marker order: images (path, bytes, PIL) and videos.
ImageSource = str | Path | bytes | Image.Image | Video


@dataclass
class Turn:
    role: Role
    content: str  # may hold IMAGE_PLACEHOLDER markers


@dataclass
class Conversation:
    turns: list[Turn]
    images: list[ImageSource] = field(default_factory=list)
    id: str = ""
    template: Template = "chat"
    # Preference data: the dispreferred alternative to the last turn, an assistant reply (the chosen one).
    rejected: str | None = None

    @property
    def num_placeholders(self) -> int:
        return sum(t.content.count(IMAGE_PLACEHOLDER) for t in self.turns)

    def add(self, role: Role, content: str) -> Conversation:
        self.turns.append(Turn(role, content))
        return self


class SampleError(ValueError):
    """A data sample that cannot be used; the message names where it is and why."""

    def __init__(self, reason: str, *, source: str = "", index: int | None = None, sample_id: str = ""):
        self.reason = reason
        self.source = source
        self.index = index
        self.sample_id = sample_id
        super().__init__(self.describe())

    def describe(self) -> str:
        where = self.source or "<data>"
        if self.index is not None:
            where += f"[{self.index}]"
        if self.sample_id:
            where += f" (id {self.sample_id!r})"
        return f"{where}: {self.reason}"
