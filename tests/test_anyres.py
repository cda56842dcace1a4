"""AnyRes (LLaVA-NeXT): token counts as transformers' LlavaNextProcessor inserts them, the arrangement as
LlavaNextModel packs it, and an AnyRes model through training, generation, saving and `minillava init`."""

from __future__ import annotations

import io
from itertools import groupby
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

from minillava.cli import main
from minillava.data.anyres import AnyResPlanner, TileGridLayout, best_resolution
from minillava.data.conversation import Conversation, Turn
from minillava.data.images import image_size
from minillava.export.hf_llava import plan_export
from minillava.export.onnx import OnnxExportError, export_onnx
from minillava.model import AnyResConfig, GenerationConfig, MiniLlava, build_prompt

PINPOINTS = [[64, 32], [32, 64], [64, 64], [32, 96], [96, 32]]  # (height, width), tower 32 px
# (width, height): wide, tall, square, very wide, very tall, odd, large, smaller than a tile
SIZES = [(50, 30), (30, 50), (32, 32), (100, 20), (20, 100), (77, 61), (300, 200), (13, 9)]


def qa(image, question="What is this?", answer="A red box.") -> Conversation:
    return Conversation([Turn("user", "<image>\n" + question), Turn("assistant", answer)], images=[image])


def slot_runs(ids: list[int], image_token_id: int) -> list[int]:
    return [len(list(run)) for token, run in groupby(ids) if token == image_token_id]


def picture(width: int, height: int) -> Image.Image:
    return Image.linear_gradient("L").resize((width, height)).convert("RGB")


@pytest.fixture(scope="module")
def models(tiny_towers, tiny_llms) -> dict[str, MiniLlava]:
    anyres = AnyResConfig(PINPOINTS)
    return {select: MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"], select=select, anyres=anyres)
            for select in ("default", "full")}


@pytest.mark.parametrize("select", ["default", "full"])
def test_token_counts_equal_llava_next_processor(models, select):
    model = models[select]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=PINPOINTS),
        tokenizer=model.tokenizer, patch_size=8, vision_feature_select_strategy=select, num_additional_image_tokens=1)
    for width, height in SIZES:
        image = picture(width, height)
        ids = processor(images=[image], text=["<image> hi"], return_tensors="pt")["input_ids"]
        plan = model.image_planner.plan(image)
        assert plan.tokens == int((ids == model.image_token_id).sum()), (width, height)
        assert len(model.pixel_values([image], [plan])) == plan.views


def test_best_fit_and_the_views(models):
    planner = models["default"].image_planner
    assert isinstance(planner, AnyResPlanner)
    assert best_resolution((30, 50), PINPOINTS) == (32, 64)  # keeps the whole image, wastes the least
    assert best_resolution((20, 100), PINPOINTS) == (32, 96)
    plan = planner.plan(picture(100, 20))
    assert plan.layout == TileGridLayout((1, 3), (4, 4), (20, 100)) and plan.views == 4
    views = planner.views(picture(100, 20), plan)
    assert [view.size for view in views] == [(32, 32)] * 4


def test_plans_read_the_size_from_the_header(tmp_path, models):
    image = picture(77, 61)
    path = tmp_path / "a.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    planner = models["default"].image_planner
    assert image_size(path) == image_size(buffer.getvalue()) == (77, 61)
    assert planner.plan(path) == planner.plan(buffer.getvalue()) == planner.plan(image)
    rotated = Image.new("RGB", (40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # turned a quarter: loaded as 20 x 40
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", exif=exif)
    assert image_size(buffer.getvalue()) == (20, 40)


@pytest.mark.parametrize("size", SIZES[:6])
def test_the_arrangement_equals_llava_next_packing(size):
    width, height = size
    patches, view = (4, 4), 32
    best = best_resolution((height, width), PINPOINTS)
    layout = TileGridLayout((best[0] // view, best[1] // view), patches, (height, width))
    torch.manual_seed(0)
    features = torch.randn(1 + layout.tiles[0] * layout.tiles[1], 16, 6)
    newline = torch.randn(6)
    owner = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=view, patch_size=8),
                                                   image_grid_pinpoints=PINPOINTS))
    packed, lengths = LlavaNextModel.pack_image_features(owner, [features], torch.tensor([[height, width]]),
                                                         "default", newline)
    arranged = layout.arrange(features, newline)
    torch.testing.assert_close(arranged, packed[0], rtol=0, atol=0)
    assert layout.num_tokens(16) == len(arranged) == int(lengths[0])


def test_forward_fills_the_slots_and_trains_the_newline(models, images):
    model = models["default"]
    wide, tall = picture(50, 30), picture(20, 100)
    batch = model.prepare([qa(wide), qa(tall, "And this?")])
    plans = batch.image_plans
    assert plans[0].tokens != plans[1].tokens and batch.pixel_values.shape[0] == plans[0].views + plans[1].views
    for row, plan in zip(batch.input_ids.tolist(), plans, strict=True):
        assert slot_runs(row, model.image_token_id) == [plan.tokens]
    with torch.no_grad():
        embeddings = model.embed(batch.input_ids, batch.pixel_values, image_plans=plans)
        first = model.encode_images(batch.pixel_values[:plans[0].views])
    filled = embeddings[0, batch.input_ids[0] == model.image_token_id]
    torch.testing.assert_close(filled, plans[0].layout.arrange(first, model.projector.image_newline))
    cols = plans[0].layout.kept[1].stop - plans[0].layout.kept[1].start
    row_ends = filled[model.tokens_per_image + cols:: cols + 1]
    torch.testing.assert_close(row_ends, model.projector.image_newline.detach().expand_as(row_ends))

    model.train()
    model.projector.requires_grad_(True)
    model.projector.zero_grad()
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, image_plans=plans)
    out.loss.backward()
    grad = model.projector.image_newline.grad
    assert torch.isfinite(out.loss) and grad is not None and grad.abs().sum() > 0
    model.eval()


def test_generation_runs(models):
    model = models["full"]
    generated = model.generate([build_prompt("What is it?", [picture(60, 20)])], GenerationConfig(max_new_tokens=3))
    assert generated[0].prompt_tokens > model.image_planner.plan(picture(60, 20)).tokens
    assert 1 <= len(generated[0].token_ids) <= 3


def test_the_model_folder_round_trips(tmp_path, models):
    model = models["default"]
    with torch.no_grad():
        model.projector.image_newline.add_(1.0)  # not the seed's: it must come from the folder
    model.save_pretrained(tmp_path / "m")
    loaded = MiniLlava.from_pretrained(tmp_path / "m")
    assert loaded.config.anyres == AnyResConfig(PINPOINTS) and "projector.image_newline" in loaded.stored_state()
    batch = model.prepare([qa(picture(77, 61))])
    with torch.no_grad():
        expected = model(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values,
                         image_plans=batch.image_plans, return_logits=True).logits
        again = loaded.prepare([qa(picture(77, 61))])
        got = loaded(again.input_ids, again.attention_mask, pixel_values=again.pixel_values,
                     image_plans=again.image_plans, return_logits=True).logits
    assert again.image_plans == batch.image_plans
    torch.testing.assert_close(got, expected)
    assert plan_export(loaded).select_strategy == "default"  # llava_next: tests/test_export_anyres.py
    with pytest.raises(OnnxExportError, match="AnyRes"):
        export_onnx(loaded, tmp_path / "onnx")
    gguf = pytest.importorskip("minillava.export.llamacpp.mmproj")
    with pytest.raises(gguf.MmprojError, match="AnyRes"):
        gguf.plan_mmproj(loaded)


def test_cli_init_with_anyres(tmp_path, tiny_towers, tiny_llms, capsys):
    out = tmp_path / "m"
    assert main(["init", "--vision", tiny_towers["clip"], "--llm", tiny_llms["llama"], "--projector", "linear",
                 "--anyres", "64x32,32x64,64x64", "--no-image-newline", "--out", str(out)]) == 0
    assert "AnyRes" in capsys.readouterr().out
    model = MiniLlava.from_pretrained(out)
    assert model.config.anyres == AnyResConfig([[64, 32], [32, 64], [64, 64]], image_newline=False)
    assert not hasattr(model.projector, "image_newline")
    plan = model.image_planner.plan(picture(50, 30))
    assert plan.tokens == 16 + 4 * 6  # global view + the unpadded 4 x 6 grid of a 1 x 2 tile grid, no row ends
    with pytest.raises(SystemExit):
        main(["init", "--vision", tiny_towers["clip"], "--anyres", "64by32", "--out", str(tmp_path / "x")])
    assert main(["init", "--vision", tiny_towers["clip"], "--llm", tiny_llms["llama"], "--anyres", "64x64",
                 "--anyres-max-views", "1", "--out", str(tmp_path / "reduced")]) == 0
    reduced = MiniLlava.from_pretrained(tmp_path / "reduced")
    assert reduced.config.anyres.max_views == 1
    assert reduced.image_planner.plan(picture(64, 64)).tokens == 16 + 4 * 4 + 4  # the 8 x 8 grid shrunk to 4 x 4


def test_anyres_refuses_what_it_cannot_tile(tiny_towers, tiny_llms):
    with pytest.raises(ValueError, match="not a multiple of the tower's 32x32"):
        MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"], anyres=AnyResConfig([[48, 32]]))
    with pytest.raises(ValueError, match="keeps the token count"):
        MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"], projector="pixel_shuffle_mlp2x_gelu",
                                  anyres=AnyResConfig(PINPOINTS))


def test_a_recipe_builds_and_trains_an_anyres_model(tmp_path):
    from test_train import tiny_config

    from minillava.train.loop import train

    grid = "model.anyres={grid_pinpoints: [[64, 128], [128, 64], [128, 128]]}"  # tiny-clip: 64 px
    config = tiny_config(tmp_path, grid, "stages.align.max_steps=2", "stages.align.save_every=0")
    config.stages = config.stages[:1]
    train(config)
    model = MiniLlava.from_pretrained(tmp_path / "run" / "align" / "final")
    assert model.config.anyres == AnyResConfig([[64, 128], [128, 64], [128, 128]])
    assert model.image_planner.plan(picture(200, 100)).views == 3
    with pytest.raises(ValueError, match="feature cache holds one view per image"):
        cached = tiny_config(tmp_path, grid, "stages.align.feature_cache=true", f"output_dir={tmp_path / 'cached'}")
        cached.stages = cached.stages[:1]
        train(cached)


@pytest.mark.parametrize("size", [(50, 30), (77, 61), (300, 200), (20, 100)])
def test_token_reduction_equals_llava_onevision(size):
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    width, height = size
    best = best_resolution((height, width), PINPOINTS)
    layout = TileGridLayout((best[0] // 32, best[1] // 32), (4, 4), (height, width), max_views=1)
    torch.manual_seed(0)
    features, newline = torch.randn(1 + layout.tiles[0] * layout.tiles[1], 16, 6), torch.randn(6)
    owner = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=32, patch_size=8),
                                                   image_grid_pinpoints=PINPOINTS))
    packed, lengths = LlavaOnevisionModel.pack_image_features(owner, [features], torch.tensor([[height, width]]),
                                                              newline, "anyres_max_1")
    torch.testing.assert_close(layout.arrange(features, newline), packed[0])
    counts = LlavaOnevisionProcessor._get_unpadded_features(SimpleNamespace(vision_aspect_ratio="anyres_max_1"),
                                                            height, width, 4, 4, *layout.tiles)
    assert layout.num_tokens(16) == 16 + sum(counts) == int(lengths[0])
    assert layout.arranged_grid != tuple(kept.stop - kept.start for kept in layout.kept)  # every size here shrinks


def test_folders_without_anyres_keep_the_format_older_minillava_reads(tiny_towers, tiny_llms, tmp_path):
    import json

    plain = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    plain.save_pretrained(tmp_path / "plain")
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert saved["version"] == 1 and "anyres" not in saved
    assert MiniLlava.from_pretrained(tmp_path / "plain").config.anyres is None


def test_an_image_that_cannot_be_planned_is_the_samples_error(models, tmp_path):
    from minillava.data.conversation import SampleError

    (tmp_path / "text.png").write_text("not an image")
    model = models["default"]
    for name, reason in [("gone.png", "no such file"), ("text.png", "not an image")]:
        with pytest.raises(SampleError, match=f"image 1 of 1: .*{name}: {reason}"):
            model.encoder.encode(qa(tmp_path / name))  # AnyRes reads each image's header to plan its tiles
