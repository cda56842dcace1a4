"""Vision encoders: importing this package registers every adapter."""

from minillava.model.vision import efficientnet, hf  # noqa: F401  (registration)
from minillava.model.vision.base import VisionEncoder
from minillava.model.vision.registry import VISION_ENCODERS

__all__ = ["VISION_ENCODERS", "VisionEncoder"]
