"""Vision encoder registry: one adapter class per exact name."""

from __future__ import annotations

from minillava.registry import Registry

VISION_ENCODERS: Registry = Registry("vision encoder")
