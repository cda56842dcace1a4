"""The server's settings: where images may come from, limits, queue and batching."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass
class ServeConfig:
    model_name: str = "minillava"  # the id clients pass as `model` and /v1/models lists
    api_key: str | None = None  # None: no authentication
    allowed_local_media_path: Path | None = None  # file:// URLs and plain paths only below this folder
    allow_remote_images: bool = False  # http(s) image URLs
    remote_timeout_s: float = 5.0
    max_images_per_prompt: int = 4
    max_image_bytes: int = 20 * MiB
    max_videos_per_prompt: int = 1  # video_url parts; 0 refuses videos
    max_video_bytes: int = 50 * MiB
    max_image_pixels: int = 50_000_000
    max_queue: int = 128  # requests waiting for the model; more are refused with 429
    max_batch_size: int = 16
    batch_wait_s: float = 0.01  # how long the worker waits for more requests to fill a batch
    max_model_len: int | None = None  # prompt + reply tokens; None: the language model's own limit
    default_max_tokens: int = 256  # when a request names no max_tokens (capped by what the context leaves)
    default_temperature: float = 1.0  # OpenAI's default when a request names none

    def __post_init__(self) -> None:
        if self.allowed_local_media_path is not None:
            self.allowed_local_media_path = Path(self.allowed_local_media_path)
        for name in ("max_images_per_prompt", "max_image_bytes", "max_image_pixels", "max_queue", "max_batch_size",
                     "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_videos_per_prompt < 0 or self.max_video_bytes < 1:
            raise ValueError("need max_videos_per_prompt >= 0 and max_video_bytes >= 1")
        if self.batch_wait_s < 0 or self.remote_timeout_s <= 0:
            raise ValueError("need batch_wait_s >= 0 and remote_timeout_s > 0")

    @property
    def max_request_bytes(self) -> int:
        """A request body limit that still fits the allowed images and videos as base64 data URLs, plus the text."""
        return (self.max_images_per_prompt * (self.max_image_bytes * 4 // 3 + 1024)
                + self.max_videos_per_prompt * (self.max_video_bytes * 4 // 3 + 1024) + 8 * MiB)
