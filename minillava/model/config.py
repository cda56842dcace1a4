"""The model folder's readable config: which components, how they connect."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONFIG_NAME = "config.json"
FORMAT_VERSION = 3  # 2: the anyres setting; 3: the video settings
# Per encoder, where it differs from LLaVA's penultimate layer (-2). EfficientNet-Lite0: blocks 10 and 15 keep
# colour and shape, which its 1280-channel head loses (see minillava/model/vision/efficientnet.py).
DEFAULT_FEATURE_LAYERS: dict[str, int | list[int]] = {"efficientnet-lite0": [11, 16]}
# Per encoder, fixed 2-D sine/cosine channels appended to every token. A CNN's tokens say what is in a cell, not
# where the cell is; ViT towers (CLIP, SigLIP, DINOv2) carry position embeddings of their own and take none.
DEFAULT_POSITION_CHANNELS: dict[str, int] = {"efficientnet-lite0": 16}
# Per encoder, the side of the grid of sub-cells whose mean colour is appended to every token (3 channels each; a
# recipe or `init --color-cells` turns them on). An ImageNet CNN's features barely tell flat colours apart: the
# centre tokens of a large blue and a large yellow circle have a cosine similarity of 0.95. ViT towers take none.
DEFAULT_COLOR_CELLS: dict[str, int] = {}


@dataclass
class VisionConfig:
    name: str = "efficientnet-lite0"  # exact registry key: efficientnet-lite0, clip, siglip, dinov2
    path: str | None = None  # folder or hub id of a Hugging Face tower
    feature_layer: int | list[int] | None = None  # hidden-state index; a list concatenates; None: the default
    select: str = "default"  # "default" drops the CLS token, "full" keeps every token
    image_aspect: str = "pad"  # pad (LLaVA-1.5), crop, or squash
    image_size: int | None = None  # None: the encoder's own size
    position_channels: int | None = None  # 2-D position channels per token (a multiple of 4); None: the default
    color_cells: int | None = None  # mean colours of color_cells x color_cells sub-cells per token; None: default

    def __post_init__(self) -> None:
        if self.feature_layer is None:
            self.feature_layer = DEFAULT_FEATURE_LAYERS.get(self.name, -2)
        if self.position_channels is None:
            self.position_channels = DEFAULT_POSITION_CHANNELS.get(self.name, 0)
        if self.color_cells is None:
            self.color_cells = DEFAULT_COLOR_CELLS.get(self.name, 0)


@dataclass
class AnyResConfig:
    """LLaVA-NeXT's AnyRes: each image as a global view plus the tiles of its best-fit grid resolution."""

    grid_pinpoints: list[list[int]]  # resolutions [height, width], each a multiple of the tower's input size
    image_newline: bool = True  # a learned embedding after every row of the tiles' feature grid
    # Token reduction (LLaVA-OneVision's anyres_max_N): a tile grid of more patches than about N views hold shrinks
    # to that budget (bilinear); None: every unpadded patch is a token.
    max_views: int | None = None

    def __post_init__(self) -> None:
        self.grid_pinpoints = [[int(side) for side in pinpoint] for pinpoint in self.grid_pinpoints]
        if not self.grid_pinpoints or any(len(p) != 2 or min(p) < 1 for p in self.grid_pinpoints):
            raise ValueError(f"anyres grid_pinpoints {self.grid_pinpoints}: give [height, width] pairs")
        if self.max_views is not None and self.max_views < 1:
            raise ValueError(f"anyres max_views {self.max_views}: at least 1, or None for no reduction")


@dataclass
class VideoConfig:
    """How a video becomes tokens: `frames` sampled evenly (a sample or request may ask for others, up to
    `max_frames`), each one view at the tower's size whose token grid shrinks by `pool` per side."""

    frames: int = 8
    max_frames: int = 32
    pool: int = 2  # LLaVA-OneVision's 2x2 (bilinear); 1 keeps every token of every frame

    def __post_init__(self) -> None:
        if min(self.frames, self.max_frames, self.pool) < 1 or self.frames > self.max_frames:
            raise ValueError(f"video settings {self}: need 1 <= frames <= max_frames and pool >= 1")


@dataclass
class MiniLlavaConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "mlp2x_gelu"
    llm: str = "smollm2-135m-instruct"  # embedded name, folder (relative to the model folder) or hub id
    image_token: str = "<image>"
    image_token_id: int | None = None  # set once the tokenizer knows the token
    max_length: int = 2048
    # Jinja text that replaces the language model's chat template (model.templates); None: the model's own.
    chat_template: str | None = None
    stored: list[str] = field(default_factory=lambda: ["projector"])  # components saved in model.safetensors
    anyres: AnyResConfig | None = None  # None: every image is one view at the tower's size
    video: VideoConfig = field(default_factory=VideoConfig)
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        """Settings left at their defaults are left out, with the oldest format version that reads the rest."""
        data = asdict(self)
        data["version"] = 1
        if self.anyres is None:
            del data["anyres"]
        else:
            data["version"] = 2
        if self.video == VideoConfig():
            del data["video"]
        else:
            data["version"] = 3
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MiniLlavaConfig:
        data = dict(data)
        version = data.get("version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"model folder format {version} is newer than this minillava ({FORMAT_VERSION})")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys in minillava config: {sorted(unknown)}")
        # Folders written before these options have none.
        vision = {"position_channels": 0, "color_cells": 0, **data.get("vision", {})}
        data["vision"] = VisionConfig(**vision)
        if data.get("anyres") is not None:
            data["anyres"] = AnyResConfig(**data["anyres"])
        data["video"] = VideoConfig(**data.get("video", {}))
        return cls(**data)

    def save(self, folder: str | Path) -> None:
        Path(folder, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> MiniLlavaConfig:
        path = Path(folder, CONFIG_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no minillava config (is {folder} a model folder from `minillava init`?)")
        return cls.from_dict(json.loads(path.read_text()))
