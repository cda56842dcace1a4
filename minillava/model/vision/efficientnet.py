"""EfficientNet-Lite0 (ImageNet-pretrained, from PyPI): its last 1280-channel map becomes the tokens."""

from __future__ import annotations

import math

import torch
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import load_file

from minillava.data.transforms import ImageTransform
from minillava.model.config import VisionConfig
from minillava.model.embedded import EFFICIENTNET_NAME, efficientnet_lite0_folder
from minillava.model.vision.base import VisionEncoder
from minillava.model.vision.registry import VISION_ENCODERS

STRIDE = 32  # total downsampling of the network
NATIVE_SIZE = 224


@VISION_ENCODERS.register(EFFICIENTNET_NAME)
class EfficientNetLite0(VisionEncoder):
    hidden_size = 1280

    def __init__(self, config: VisionConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        if config.path is not None:
            raise ValueError(f"{EFFICIENTNET_NAME} is embedded; it takes no path (got {config.path!r})")
        if config.select != "default":
            raise ValueError(f"{EFFICIENTNET_NAME} has no CLS token; select must be 'default'")
        self.net = EfficientNet.from_name(EFFICIENTNET_NAME)
        state = load_file(str(efficientnet_lite0_folder() / "model.safetensors"))
        self.net.load_state_dict(state)
        del self.net._fc  # the classifier head is not used
        self.net.to(dtype)
        size = config.image_size or NATIVE_SIZE
        side = math.ceil(size / STRIDE)
        self.grid = (side, side)
        self.num_tokens = side * side
        # Inputs scaled to [-1, 1] suited this network better than ImageNet mean/std.
        self.transform = ImageTransform(
            size=(size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode=config.image_aspect
        )
        self.eval()

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        maps = self.net.extract_features(pixel_values.to(dtype))  # (B, 1280, h, w)
        return maps.flatten(2).transpose(1, 2)
