"""ONNX export of the vision tower + projector, checked by onnxruntime against minillava."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minillava.cli import main
from minillava.export.onnx import GRAPH, PREPROCESSOR, REPORT, OnnxExportError, embed_with_onnx, export_onnx
from minillava.model import MiniLlava

pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime (pip install 'minillava[onnx]')")


@pytest.mark.parametrize("tower,projector", [("clip", "mlp2x_gelu"), ("siglip", "pixel_shuffle_mlp2x_gelu")])
def test_onnxruntime_gives_minillavas_image_embeddings(tiny_towers, tiny_llms, images, tmp_path, tower, projector):
    model = MiniLlava.from_components(tiny_towers[tower], tiny_llms["llama"], projector,
                                      **({"select": "full"} if tower == "siglip" else {})).eval()
    report = export_onnx(model, tmp_path / "onnx")
    assert report.max_abs_diff <= 1e-4 and report.output_shape[1] == model.tokens_per_image
    pixels = model.pixel_values(images[:3])  # other images than the export's check, and a batch size it never saw
    with torch.no_grad():
        expected = model.encode_images(pixels).numpy()
    got = embed_with_onnx(tmp_path / "onnx", pixels.numpy())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    saved = json.loads((tmp_path / "onnx" / PREPROCESSOR).read_text())
    assert saved == model.vision.transform.to_dict()
    assert json.loads((tmp_path / "onnx" / REPORT).read_text())["opset"] == report.opset


def test_export_command_writes_onnx_and_refuses_to_overwrite(tiny_towers, tiny_llms, tmp_path, capsys):
    folder = tmp_path / "model"
    assert main(["init", "--vision", tiny_towers["clip"], "--llm", tiny_llms["llama"], "--out", str(folder)]) == 0
    out = tmp_path / "onnx"
    assert main(["export", "--model", str(folder), "--format", "onnx", "--out", str(out)]) == 0
    assert "onnxruntime matches minillava" in capsys.readouterr().out
    assert (out / GRAPH).stat().st_size > 10_000
    with pytest.raises(OnnxExportError, match="not empty"):
        export_onnx(MiniLlava.from_pretrained(folder), out)


@pytest.mark.embedded
def test_the_embedded_efficientnet_tower_exports(tmp_path):
    """The demo's default model has an edge path: EfficientNet-Lite0 + its projector in onnxruntime."""
    model = MiniLlava.from_components().eval()
    report = export_onnx(model, tmp_path / "onnx")
    assert report.max_abs_diff <= 1e-4 and report.output_shape == ["batch", 49, 576]
