"""Export of AnyRes models to the Hugging Face `llava_next` layout: LlavaNextForConditionalGeneration and
AutoProcessor load it and agree with our model (token counts, pixels, logits, greedy text)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from test_export import QUESTION, distinct_model, hf_inputs
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from minillava.cli import main
from minillava.export import ExportError, export_hf_llava
from minillava.model import AnyResConfig, MiniLlava, build_prompt

PINPOINTS = [[64, 32], [32, 64], [64, 64], [32, 96], [96, 32]]  # (height, width), tiny towers: 32 px
# (width, height) of images whose fitted size equals their grid resolution: wide, tall, square, very wide (1 x 3
# tiles), a downscaled wide one and an upscaled square one.
UNPADDED = [(64, 32), (32, 64), (64, 64), (96, 32), (128, 64), (48, 48)]
# Images that do not fill their grid resolution: their tiles are padded (black, on both sides).
PADDED = [(50, 30), (30, 50), (77, 61)]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["clip", "siglip"])
def exported(request, tiny_towers, tiny_llms, tmp_path_factory):
    """(our AnyRes model, its llava_next folder, transformers' model, processor) for a CLIP and a SigLIP tower."""
    model = distinct_model(tiny_towers, tiny_llms, request.param, anyres=AnyResConfig(PINPOINTS)).eval()
    out = export_hf_llava(model, tmp_path_factory.mktemp("hf") / request.param)
    hf = LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    return model, out, hf, AutoProcessor.from_pretrained(out)


def ours_and_theirs(model: MiniLlava, hf, image: Image.Image, inputs, pixel_values: torch.Tensor | None = None):
    """Our batch and logits (on `pixel_values`, default: our own preprocessing), and transformers' logits."""
    batch = model.prepare([build_prompt(QUESTION, [image])], add_generation_prompt=True)
    pixels = batch.pixel_values if pixel_values is None else pixel_values
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask, pixel_values=pixels, image_plans=batch.image_plans,
                     return_logits=True).logits
        theirs = hf(**inputs).logits[..., :ours.shape[-1]]
    return batch, ours, theirs


def test_the_folder_has_the_llava_next_layout(exported, tmp_path):
    model, out, hf, processor = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_next"
    assert config["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert config["image_grid_pinpoints"] == PINPOINTS
    assert config["vision_feature_select_strategy"] == ("default" if model.config.vision.name == "clip" else "full")
    image_processor = json.loads((out / "preprocessor_config.json").read_text())
    assert image_processor["image_processor_type"] == "LlavaNextImageProcessor"
    assert image_processor["image_grid_pinpoints"] == PINPOINTS and image_processor["crop_size"]["height"] == 32
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "LlavaNextProcessor"
    assert type(processor).__name__ == "LlavaNextProcessor"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("image_newline"), model.projector.image_newline.detach())
    # transformers 5 keeps it as model.image_newline in memory and writes the llava_next name back on save.
    torch.testing.assert_close(hf.model.image_newline, model.projector.image_newline, rtol=0, atol=0)
    hf.save_pretrained(tmp_path / "again")
    with safe_open(str(tmp_path / "again" / "model.safetensors"), "pt") as f:
        assert "image_newline" in set(f.keys())


@pytest.mark.parametrize("size", UNPADDED)
def test_tokens_pixels_logits_and_greedy_text_equal_ours(exported, size):
    model, _, hf, processor = exported
    image = noise(*size)
    inputs = hf_inputs(processor, image)
    batch, ours, theirs = ours_and_theirs(model, hf, image, inputs, pixel_values=inputs["pixel_values"][0])
    assert torch.equal(inputs["input_ids"], batch.input_ids)  # the same prompt and image token count
    assert int((batch.input_ids == model.image_token_id).sum()) == batch.image_plans[0].tokens
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)  # the same model on the same pixels
    # Our pixels: normalisation rounds differently by up to 1 ulp (5e-7), which this random LM (weights of std
    # 0.3) amplifies to about 1.5e-4 in its logits; the greedy text below is the end-to-end check.
    torch.testing.assert_close(batch.pixel_values, inputs["pixel_values"][0], atol=1e-6, rtol=0)
    _, own, _ = ours_and_theirs(model, hf, image, inputs)
    torch.testing.assert_close(theirs, own, atol=1e-3, rtol=1e-4)
    generated = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    ours_text = model.ask(QUESTION, [image], max_new_tokens=12)
    assert text == ours_text and len(set(ours_text.split())) > 2  # a varied reply, not one repeated token


@pytest.mark.parametrize("size", PADDED)
def test_padded_tiles_are_black_on_both_sides(exported, size):
    """Tiles of images that do not fill their grid resolution: the same token count, the same pixels (black
    padding, as transformers pads) and the same logits."""
    model, _, hf, processor = exported
    image = noise(*size)
    inputs = hf_inputs(processor, image)
    batch, ours, theirs = ours_and_theirs(model, hf, image, inputs, pixel_values=inputs["pixel_values"][0])
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    transform = model.vision.transform
    black = torch.tensor([-m / s for m, s in zip(transform.mean, transform.std, strict=True)]).view(3, 1, 1)
    tiles = batch.pixel_values[1:]
    assert ((tiles - black).abs().amax(dim=1) < 1e-6).any()  # some padding in the tiles
    torch.testing.assert_close(inputs["pixel_values"][0], batch.pixel_values, atol=1e-6, rtol=0)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("tower", "options", "reason"), [
    ("clip", {"anyres": AnyResConfig(PINPOINTS, image_newline=False)}, "without image_newline"),
    ("clip", {"anyres": AnyResConfig(PINPOINTS, max_views=1)}, "token reduction"),
    ("clip", {"anyres": AnyResConfig(PINPOINTS), "select": "full"}, "no place for the tile's CLS"),
])
def test_what_llava_next_cannot_express_is_refused(tiny_towers, tiny_llms, tmp_path, tower, options, reason):
    model = MiniLlava.from_components(tiny_towers[tower], tiny_llms["llama"], **options)
    with pytest.raises(ExportError, match=reason):
        export_hf_llava(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_command_writes_llava_next(tiny_towers, tiny_llms, tmp_path, capsys):
    folder = tmp_path / "model"
    assert main(["init", "--vision", tiny_towers["siglip"], "--llm", tiny_llms["llama"],
                 "--anyres", "64x32,32x64,64x64", "--out", str(folder)]) == 0
    out = tmp_path / "hf"
    assert main(["export", "--model", str(folder), "--format", "hf-llava", "--out", str(out),
                 "--target", "vllm"]) == 0
    assert "LlavaNextForConditionalGeneration.from_pretrained" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["image_grid_pinpoints"] == [[64, 32], [32, 64], [64, 64]]
    image = noise(64, 32)
    processor = AutoProcessor.from_pretrained(out)
    ids = hf_inputs(processor, image)["input_ids"]
    model = MiniLlava.from_pretrained(folder)
    assert int((ids == model.image_token_id).sum()) == model.image_planner.plan(image).tokens


def test_export_import_export_keeps_the_anyres_model(exported, tmp_path):
    model, out, _, _ = exported
    assert main(["import", "--from", str(out), "--out", str(tmp_path / "imported")]) == 0
    imported = MiniLlava.from_pretrained(tmp_path / "imported")
    assert imported.config.anyres == model.config.anyres
    torch.testing.assert_close(imported.projector.image_newline, model.projector.image_newline, rtol=0, atol=0)
    again = export_hf_llava(imported, tmp_path / "hf")
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((again / name).read_text()), name
    with safe_open(str(out / "model.safetensors"), "pt") as a, safe_open(str(again / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(key), b.get_tensor(key)) for key in a.keys())
    image = noise(*PADDED[0])  # ours on both sides: the mean-colour padding too
    assert imported.image_planner.plan(image) == model.image_planner.plan(image)
    torch.testing.assert_close(imported.pixel_values([image]), model.pixel_values([image]), rtol=0, atol=0)
    assert imported.ask(QUESTION, [image], max_new_tokens=8) == model.ask(QUESTION, [image], max_new_tokens=8)


def test_import_refuses_other_llava_families(exported, tmp_path):
    import shutil

    from minillava.export.importer import CheckpointError, import_llava

    _, out, _, _ = exported
    source = tmp_path / "onevision"
    shutil.copytree(out, source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "llava_onevision"}))
    with pytest.raises(CheckpointError, match="model_type 'llava_onevision' is not supported"):
        import_llava(source, tmp_path / "model")
