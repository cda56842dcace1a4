"""Video on a model: the planner that fits its tower and projector."""

from __future__ import annotations

from minillava.data.video import VideoPlanner
from minillava.model.config import VideoConfig
from minillava.model.projectors import Projector
from minillava.model.vision import VisionEncoder


def video_planner(config: VideoConfig, vision: VisionEncoder, projector: Projector) -> VideoPlanner:
    """Frames are single views at the tower's size; their projected token grid (after any kept CLS) is pooled."""
    grid = projector.output_grid(vision.patch_grid or vision.grid)
    return VideoPlanner(config.frames, config.max_frames, config.pool, projector.num_tokens(vision.num_tokens), grid)
