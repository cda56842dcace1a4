"""EfficientNet-Lite0 (ImageNet-pretrained, from PyPI): one or more of its feature maps become the tokens.

The network's states are numbered like a transformer's hidden states: 0 is the stem, 1-16 the outputs of the 16
blocks, 17 (or -1) the 1280-channel head. A list of states is concatenated channel-wise after each map is
average-pooled to the last map's grid (7 x 7 at 224 px), so the token count stays 49 whatever the layers, and
normalised per token (layer norm without weights), so maps of different scales mix evenly. Convolutions are
translation-equivariant, so a token says what is in its cell but not where the cell is: fixed 2-D sine/cosine
channels of the cell's centre are appended (`position_channels`), which "is the star left or right of the
square?" needs. Its features also barely tell flat colours apart, so the mean colours of each cell's sub-cells
are appended too (`color_cells`).
Mid-level maps keep colour and shape, which the head (trained for ImageNet classes) largely discards; a linear
probe per token (bench/encoder_probe.py) shows it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        widths = [self.net._bn0.num_features, *(b._bn2.num_features for b in self.net._blocks),
                  self.net._bn1.num_features]
        layers = config.feature_layer if isinstance(config.feature_layer, list) else [config.feature_layer]
        for layer in layers:
            if not -len(widths) <= layer < len(widths):
                raise ValueError(f"{EFFICIENTNET_NAME}: feature layer {layer} is out of range; states are 0 (stem), "
                                 f"1-{len(widths) - 2} (blocks) and {len(widths) - 1} or -1 (head)")
        self.layers = [layer % len(widths) for layer in layers]
        size = config.image_size or NATIVE_SIZE
        side = math.ceil(size / STRIDE)
        self.grid = (side, side)
        self.num_tokens = side * side
        self.register_buffer("positions", grid_positions(self.grid, config.position_channels).to(dtype),
                             persistent=False)
        if config.color_cells < 0:
            raise ValueError(f"color_cells must be >= 0 (got {config.color_cells})")
        self.color_cells = config.color_cells
        self.hidden_size = (sum(widths[layer] for layer in self.layers) + config.position_channels
                            + 3 * config.color_cells**2)
        # Inputs scaled to [-1, 1] suited this network better than ImageNet mean/std.
        self.transform = ImageTransform(
            size=(size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode=config.image_aspect
        )
        self.eval()

    def train(self, mode: bool = True) -> EfficientNetLite0:
        # Fine-tuned, the tower learns its weights with its batch-norm statistics and drop-connect fixed: a training
        # batch holds a few images, whose statistics would replace ImageNet's with noise.
        super().train(mode)
        self.net.eval()
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixel_values.to(net._conv_stem.weight.dtype))))
        states = [x]
        last = max(self.layers)
        drop_rate = net._global_params.drop_connect_rate  # only active when the encoder trains
        for index, block in enumerate(net._blocks[: last]):
            x = block(x, drop_connect_rate=drop_rate * index / len(net._blocks) if drop_rate else None)
            states.append(x)
        if last == len(net._blocks) + 1:
            states.append(net._swish(net._bn1(net._conv_head(x))))
        # Each map is normalised per token: block outputs are linear projections with scales of 2-5 (the head's
        # are below 1), and unnormalised they reach the language model at five times its embeddings' norm.
        maps = [F.adaptive_avg_pool2d(states[layer], self.grid).flatten(2).transpose(1, 2) for layer in self.layers]
        maps = [F.layer_norm(m, m.shape[-1:]) for m in maps]
        if self.positions.shape[-1]:
            maps.append(self.positions.to(maps[0].dtype).expand(maps[0].shape[0], -1, -1))
        if self.color_cells:
            maps.append(cell_colors(pixel_values, self.grid, self.color_cells).to(maps[0].dtype))
        return torch.cat(maps, dim=-1)  # (B, h * w, channels)


def cell_colors(pixel_values: torch.Tensor, grid: tuple[int, int], cells: int) -> torch.Tensor:
    """(B, h * w, 3 * cells**2): the mean colour of each of a token's cells x cells sub-cells, in the pixels'
    [-1, 1] scale, which is the layer-normed features' scale beside them. A small shape fills a few sub-cells,
    so its colour is not averaged away with the background's."""
    h, w = grid
    means = F.adaptive_avg_pool2d(pixel_values.float(), (h * cells, w * cells))  # (B, 3, h c, w c)
    b = means.shape[0]
    means = means.reshape(b, 3, h, cells, w, cells).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, 3, c, c)
    return means.reshape(b, h * w, 3 * cells * cells)


def grid_positions(grid: tuple[int, int], channels: int) -> torch.Tensor:
    """(h * w, channels): sin and cos of each cell centre's row and column at channels / 4 frequencies.

    Frequency k (1, 2, ...) gives sin(pi k u) and cos(pi k u) of the coordinate u in (0, 1); cos(pi u) alone
    orders left to right, the higher ones tell neighbouring cells apart. Values lie in [-1, 1], the scale of the
    layer-normed features beside them.
    """
    if channels < 0 or channels % 4:
        raise ValueError(f"position_channels must be a non-negative multiple of 4 (got {channels})")
    h, w = grid
    rows = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    cols = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    u = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2)  # (row, col) per token
    k = torch.arange(1, channels // 4 + 1, dtype=torch.float64)
    angles = math.pi * u[:, :, None] * k  # (tokens, 2, channels / 4)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(h * w, channels).float()
