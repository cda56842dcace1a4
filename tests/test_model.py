"""The model contracts: token counts, slot filling, loss over labelled positions, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minillava.data.conversation import Conversation, Turn
from minillava.data.tokenize import IGNORE_INDEX
from minillava.model import ImageSlotError, MiniLlava, MiniLlavaConfig, build_prompt


def make(tiny_towers, tiny_llms, tower="clip", llm="llama", **options) -> MiniLlava:
    return MiniLlava.from_components(tiny_towers[tower], tiny_llms[llm], **options)


def qa(images, question="What is this?", answer="A red box.") -> Conversation:
    text = "".join("<image>\n" for _ in images) + question
    return Conversation([Turn("user", text), Turn("assistant", answer)], images=list(images))


@pytest.mark.parametrize(("tower", "select", "tokens"), [
    ("clip", "default", 16), ("clip", "full", 17), ("siglip", "default", 16), ("siglip", "full", 16),
    ("dinov2", "default", 16), ("dinov2", "full", 17),
])
def test_tokens_per_image_follow_the_select_strategy(tiny_towers, tiny_llms, tower, select, tokens):
    model = make(tiny_towers, tiny_llms, tower, select=select)
    assert model.tokens_per_image == tokens
    features = model.vision(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, tokens, 32)


def test_feature_layers_concatenate(tiny_towers, tiny_llms):
    model = make(tiny_towers, tiny_llms, feature_layer=[-1, -2])
    assert model.vision.hidden_size == 64
    assert model.vision(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 64)
    with pytest.raises(ValueError, match="out of range"):
        make(tiny_towers, tiny_llms, feature_layer=9)


def test_vit_towers_take_no_position_channels(tiny_towers, tiny_llms):
    assert make(tiny_towers, tiny_llms).config.vision.position_channels == 0
    with pytest.raises(ValueError, match="own position embeddings"):
        make(tiny_towers, tiny_llms, position_channels=16)


def test_position_channels_order_cells_and_tell_them_apart():
    from minillava.model.vision.efficientnet import grid_positions

    positions = grid_positions((7, 7), 16)
    assert positions.shape == (49, 16) and positions.abs().max() <= 1
    assert len({tuple(row.tolist()) for row in positions.round(decimals=4)}) == 49
    # cos(pi u) of the column (channel 12: column coordinate, cosine, lowest frequency) falls left to right
    # and is the same down a column; the row's (channel 4) falls top to bottom.
    grid = positions.reshape(7, 7, 16)
    assert (grid[:, 1:, 12] < grid[:, :-1, 12]).all() and torch.allclose(grid[1:, :, 12], grid[:-1, :, 12])
    assert (grid[1:, :, 4] < grid[:-1, :, 4]).all()
    assert grid_positions((7, 7), 0).shape == (49, 0)
    with pytest.raises(ValueError, match="multiple of 4"):
        grid_positions((7, 7), 6)


def test_folders_written_before_position_channels_keep_none():
    old = MiniLlavaConfig.from_dict({"vision": {"name": "efficientnet-lite0", "feature_layer": [11, 16]}})
    assert old.vision.position_channels == 0 and old.vision.color_cells == 0
    assert MiniLlavaConfig().vision.position_channels == 16  # new models get the encoder's default
    assert MiniLlavaConfig().vision.color_cells == 0


def test_cell_colors_keep_each_sub_cells_colour():
    from minillava.model.vision.efficientnet import cell_colors

    pixels = -torch.ones(1, 3, 224, 224)
    pixels[0, 0, :8, :8] = 1.0  # a red 8 x 8 patch in the top-left sub-cell of the first token
    colours = cell_colors(pixels, (7, 7), 4).reshape(1, 49, 3, 4, 4)
    assert colours.shape == (1, 49, 3, 4, 4)
    assert colours[0, 0, 0, 0, 0] == 1.0 and colours[0, 0, 0, 0, 1] == -1.0 and (colours[0, 1:, 0] == -1).all()
    assert (colours[0, :, 1:] == -1).all()


def test_vit_towers_take_no_color_cells(tiny_towers, tiny_llms):
    assert make(tiny_towers, tiny_llms).config.vision.color_cells == 0
    with pytest.raises(ValueError, match="color_cells are for CNN encoders"):
        make(tiny_towers, tiny_llms, color_cells=2)


@pytest.mark.parametrize(("projector", "tokens"), [("linear", 16), ("mlp3x_gelu", 16),
                                                   ("pixel_shuffle_mlp2x_gelu", 4)])
def test_projectors(tiny_towers, tiny_llms, projector, tokens):
    model = make(tiny_towers, tiny_llms, projector=projector)
    assert model.tokens_per_image == tokens
    out = model.encode_images(torch.zeros(3, 3, 32, 32))
    assert out.shape == (3, tokens, 64)


def test_pixel_shuffle_pads_odd_grids():
    from minillava.model.projectors import build_projector

    projector = build_projector("pixel_shuffle_mlp2x_gelu", 8, 16, grid=(5, 5))
    assert projector.num_tokens(25) == 9
    assert projector(torch.randn(2, 25, 8)).shape == (2, 9, 16)
    with pytest.raises(ValueError, match="grid"):
        build_projector("pixel_shuffle_mlp2x_gelu", 8, 16, grid=None)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("mlp2x_relu", 8, 16, grid=None)


@pytest.mark.parametrize("llm", ["llama", "qwen2", "gpt2"])
def test_loss_equals_full_logits_loss_on_labelled_positions(tiny_towers, tiny_llms, images, llm):
    model = make(tiny_towers, tiny_llms, llm=llm)
    batch = model.prepare([qa(images[:1]), qa(images[1:3], "Compare them.", "Green, then blue.")])
    assert batch.pixel_values.shape == (3, 3, 32, 32)
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, return_logits=True)
    logits = out.logits[:, :-1].float()
    targets = batch.labels[:, 1:]
    reference = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    assert out.num_label_tokens == int((targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(out.loss, reference)


def test_image_features_land_in_the_slots(tiny_towers, tiny_llms, images):
    model = make(tiny_towers, tiny_llms)
    batch = model.prepare([qa(images[:2])])
    embeddings = model.embed(batch.input_ids, batch.pixel_values)
    features = model.encode_images(batch.pixel_values).reshape(-1, 64)
    slots = batch.input_ids[0] == model.image_token_id
    assert int(slots.sum()) == 2 * model.tokens_per_image
    torch.testing.assert_close(embeddings[0, slots], features)
    text = model.language_model.get_input_embeddings()(batch.input_ids[0, ~slots])
    torch.testing.assert_close(embeddings[0, ~slots], text)


def test_slot_count_mismatch_is_an_error(tiny_towers, tiny_llms, images):
    model = make(tiny_towers, tiny_llms)
    batch = model.prepare([qa(images[:2])])
    with pytest.raises(ImageSlotError, match="32 image slots .* 1 images"):
        model.embed(batch.input_ids, batch.pixel_values[:1])


def test_only_the_projector_trains_by_default(tiny_towers, tiny_llms, images):
    model = make(tiny_towers, tiny_llms)
    model.language_model.requires_grad_(False)
    model.train()
    assert not model.vision.training  # a frozen tower stays in eval mode
    batch = model.prepare([qa(images[:1])])
    model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values).loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.vision.parameters())


def test_save_and_load_round_trip(tiny_towers, tiny_llms, images, tmp_path):
    model = make(tiny_towers, tiny_llms, "siglip", "qwen2", projector="mlp2x_gelu")
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tokenizer")) == [
        "chat_template.jinja", "config.json", "model.safetensors"]
    loaded = MiniLlava.from_pretrained(tmp_path)
    assert loaded.config.to_dict() == MiniLlavaConfig.load(tmp_path).to_dict()
    batch = model.prepare([qa(images[:1])])
    args = (batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    torch.testing.assert_close(model(*args).loss, loaded(*args).loss)


def test_full_language_model_weights_can_be_stored(tiny_towers, tiny_llms, images, tmp_path):
    model = make(tiny_towers, tiny_llms)
    with torch.no_grad():
        model.language_model.get_input_embeddings().weight.mul_(2)  # a "fine-tuned" LM (tied to lm_head)
    model.config.stored = ["projector", "language_model"]
    model.save_pretrained(tmp_path)
    loaded = MiniLlava.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.language_model.lm_head.weight, model.language_model.lm_head.weight)
    torch.testing.assert_close(loaded.language_model.get_input_embeddings().weight,
                               model.language_model.get_input_embeddings().weight)


def test_a_bad_config_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no minillava config"):
        MiniLlava.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"vision": {}, "colour": 1}')
    with pytest.raises(ValueError, match="unknown keys"):
        MiniLlava.from_pretrained(tmp_path)


def test_build_prompt_places_images_first():
    conv = build_prompt("Describe.", ["a.png", "b.png"], system="Be brief.")
    assert [t.role for t in conv.turns] == ["system", "user"]
    assert conv.turns[1].content == "<image>\n<image>\nDescribe."
    assert build_prompt("Look: <image>", ["a.png"]).turns[0].content == "Look: <image>"
