"""The vision tower and projector as one ONNX graph: preprocessed pixels in, the language model's image embeddings
out, for edge runtimes; checked against minillava with onnxruntime before the folder is written.

Any tower works, the embedded EfficientNet-Lite0 included (the demo's model has an edge path), and any projector.
The folder holds `vision_projector.onnx` (input `pixel_values` (batch, 3, H, W) float32, output `image_embeds`
(batch, tokens per image, LM width), batch dynamic), `preprocessor.json` (the image transform: size, mean, std,
aspect handling) and `onnx_export.json` (shapes, opset, the check's max abs difference and the versions). The
language model stays with the other exports (hf-llava for transformers and vLLM).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minillava.model import MiniLlava
from minillava.paths import atomic_folder

log = logging.getLogger(__name__)
GRAPH, PREPROCESSOR, REPORT = "vision_projector.onnx", "preprocessor.json", "onnx_export.json"
OPSET = 18
MAX_BATCH = 256  # the largest batch the graph's dynamic axis admits
TOLERANCE = 1e-4  # max abs difference of the embeddings, onnxruntime against minillava, fp32


class OnnxExportError(ValueError):
    """The model cannot be written as ONNX (a missing package, or onnxruntime disagrees with minillava)."""


class ImageEmbedder(nn.Module):
    """What the graph computes: `MiniLlava.encode_images` without the device and dtype moves."""

    def __init__(self, model: MiniLlava):
        super().__init__()
        self.vision, self.projector = model.vision, model.projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision(pixel_values))


@dataclass
class OnnxExport:
    folder: str
    input_shape: list  # (batch, 3, H, W), batch dynamic
    output_shape: list  # (batch, tokens, width)
    opset: int
    max_abs_diff: float  # onnxruntime against minillava on the check images
    check_images: int
    onnxruntime: str
    torch: str


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxExportError("ONNX export needs onnx, onnxscript and onnxruntime: "
                              "pip install 'minillava[onnx]'") from None
    return onnxruntime


def check_images(model: MiniLlava, n: int = 3, seed: int = 0) -> torch.Tensor:
    """Preprocessed pixels of `n` seeded random images of different sizes (the transform's own path)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (48 + 16 * k, 64 - 8 * k, 3), dtype=np.uint8)) for k in range(n)]
    return model.pixel_values(images).float()


def export_onnx(model: MiniLlava, out: str | Path, overwrite: bool = False, opset: int = OPSET,
                tolerance: float = TOLERANCE) -> OnnxExport:
    """Write the tower + projector graph and its preprocessing into `out`, after onnxruntime matched minillava
    (float32) within `tolerance` on seeded images."""
    if model.config.anyres is not None:
        raise OnnxExportError("an AnyRes model: the graph embeds single views, not the tiling and image_newline rows "
                              "of AnyRes; keep using the minillava model folder")
    runtime = _runtime()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OnnxExportError(f"{out} exists and is not empty; choose another output folder or pass --overwrite")
    embedder = ImageEmbedder(model).float().eval()
    pixels = check_images(model)
    with torch.no_grad():
        expected = embedder(pixels).numpy()
    with atomic_folder(out) as tmp, torch.no_grad():
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        torch.onnx.export(embedder, (pixels,), str(tmp / GRAPH), input_names=["pixel_values"],
                          output_names=["image_embeds"], dynamic_shapes={"pixel_values": {0: batch}},
                          opset_version=opset, dynamo=True, verbose=False)
        session = runtime.InferenceSession(str(tmp / GRAPH), providers=["CPUExecutionProvider"])
        got = session.run(None, {"pixel_values": pixels.numpy()})[0]
        single = session.run(None, {"pixel_values": pixels[:1].numpy()})[0]  # the batch axis is dynamic
        diff = float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))
        if got.shape != expected.shape or not diff <= tolerance:
            raise OnnxExportError(f"onnxruntime's image embeddings differ from minillava's by {diff:.3g} "
                                  f"(shapes {got.shape} / {expected.shape}; tolerance {tolerance:g})")
        (tmp / PREPROCESSOR).write_text(json.dumps(model.vision.transform.to_dict(), indent=1) + "\n")
        report = OnnxExport(str(out), ["batch", *pixels.shape[1:]], ["batch", *expected.shape[1:]], opset, diff,
                            len(pixels), runtime.__version__, torch.__version__)
        (tmp / REPORT).write_text(json.dumps(asdict(report), indent=1) + "\n")
    log.info("wrote %s: onnxruntime matches minillava within %.2g", out / GRAPH, diff)
    return report


def embed_with_onnx(folder: str | Path, pixel_values: np.ndarray) -> np.ndarray:
    """Run an exported graph: preprocessed pixels (batch, 3, H, W) -> image embeddings."""
    session = _runtime().InferenceSession(str(Path(folder) / GRAPH), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": np.asarray(pixel_values, dtype=np.float32)})[0]
