"""Image plans: each image's own slot count flows through tokenization, collate and the forward."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import pytest
import torch
from PIL import Image
from test_train import tiny_config

from minillava.data.collate import collate
from minillava.data.conversation import Conversation, Turn
from minillava.data.image_plan import ImagePlan, SingleViewPlanner
from minillava.data.tokenize import ConversationEncoder
from minillava.model import GenerationConfig, ImageSlotError, MiniLlava, build_prompt
from minillava.model.image_slots import check_image_slots
from minillava.model.language import load_tokenizer
from minillava.train.loop import train


@dataclass(frozen=True)
class NamedPlanner:
    """Test-only: slot counts by file name, known without reading any file."""

    tokens: dict[str, int]

    def plan(self, image) -> ImagePlan:
        return ImagePlan(views=1, tokens=self.tokens[str(image)])

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        return [image]


@dataclass(frozen=True)
class MirroredWide:
    """Test-only: a wide image is seen twice (as is, then mirrored), so it takes two views' slots."""

    tokens_per_view: int

    def plan(self, image: Image.Image) -> ImagePlan:
        views = 2 if image.width > image.height else 1
        return ImagePlan(views=views, tokens=views * self.tokens_per_view)

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        return [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)][: plan.views]


def slot_runs(ids: list[int], image_token_id: int) -> list[int]:
    return [len(list(run)) for token, run in groupby(ids) if token == image_token_id]


def qa(images, question="What is this?", answer="A red box.") -> Conversation:
    text = "".join("<image> and " for _ in images) + question
    return Conversation([Turn("user", text), Turn("assistant", answer)], images=list(images))


@pytest.fixture(scope="module")
def encoder(tiny_llms) -> ConversationEncoder:
    tokenizer = load_tokenizer(tiny_llms["llama"], "<image>")
    return ConversationEncoder(tokenizer, tokenizer.convert_tokens_to_ids("<image>"),
                               NamedPlanner({"a.png": 3, "b.png": 7}))


@pytest.fixture()
def model(tiny_towers, tiny_llms) -> MiniLlava:
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    model.encoder.planner = MirroredWide(model.tokens_per_image)
    return model


def test_a_number_is_the_single_view_planner(encoder):
    fixed = ConversationEncoder(encoder.tokenizer, encoder.image_token_id, 5)
    assert fixed.planner == SingleViewPlanner(5) and fixed.planner.plan("x.png") == ImagePlan(1, 5)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_each_image_takes_its_own_slot_count_in_order(encoder, template):
    conv = qa(["b.png", "a.png"])
    conv.template = template
    sample = encoder.encode(conv)
    # plain: the slots of both images lead, one run
    assert slot_runs(sample.input_ids, encoder.image_token_id) == ([7, 3] if template == "chat" else [10])
    assert sample.image_plans == [ImagePlan(1, 7), ImagePlan(1, 3)]
    assert all(label == -100 for token, label in zip(sample.input_ids, sample.labels, strict=True)
               if token == encoder.image_token_id)


def test_independent_turns_and_preference_pairs_carry_the_plans(encoder):
    conv = Conversation([Turn("user", "<image>\nA?"), Turn("assistant", "a"), Turn("user", "B?"),
                         Turn("assistant", "b")], images=["b.png"])
    blocked = encoder.encode(conv, independent_turns=True)
    assert slot_runs(blocked.input_ids, encoder.image_token_id) == [7] and blocked.image_plans == [ImagePlan(1, 7)]
    conv = Conversation([Turn("user", "<image>\nA?"), Turn("assistant", "yes")], images=["a.png"], rejected="no")
    pair = encoder.encode_preference(conv)
    assert pair.image_plans == [ImagePlan(1, 3)]
    assert slot_runs(pair.rejected.input_ids, encoder.image_token_id) == [3]


def test_truncation_keeps_the_plans_of_the_images_it_keeps(encoder):
    conv = Conversation([Turn("user", "<image> A"), Turn("assistant", "first reply"), Turn("user", "<image> B"),
                         Turn("assistant", "second")], images=["a.png", "b.png"])
    full = encoder.encode(conv)
    second = [i for i, t in enumerate(full.input_ids) if t == encoder.image_token_id][3]
    encoder.max_length = second + 2  # inside the second image's 7 slots: the image goes, the first reply stays
    try:
        cut = encoder.encode(conv)
    finally:
        encoder.max_length = None
    assert cut.images == ["a.png"] and cut.image_plans == [ImagePlan(1, 3)]
    assert slot_runs(cut.input_ids, encoder.image_token_id) == [3] and len(cut.input_ids) == second


def test_collate_lists_every_image_plan_in_slot_order():
    plans = [[ImagePlan(1, 3), ImagePlan(2, 8)], [], [ImagePlan(1, 4)]]
    batch = collate([[1], [2], [3]], None, 0, [None, None, None], image_plans=plans)
    assert batch.image_plans == [ImagePlan(1, 3), ImagePlan(2, 8), ImagePlan(1, 4)]
    assert batch.to("cpu").image_plans == batch.image_plans
    assert collate([[1]], None, 0, [None]).image_plans is None


def test_two_counts_in_one_batch_fill_their_slots_in_order(model, images):
    wide, tall = images[0], images[1]
    t = model.tokens_per_image
    batch = model.prepare([qa([tall, wide]), qa([wide], "And this?")])
    assert batch.image_plans == [ImagePlan(1, t), ImagePlan(2, 2 * t), ImagePlan(2, 2 * t)]
    assert batch.pixel_values.shape[0] == 5  # 1 + 2 views in the first sample, 2 in the second
    transform = model.vision.transform
    mirrored = wide.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    torch.testing.assert_close(batch.pixel_values[3:], transform([wide, mirrored]))
    assert slot_runs(batch.input_ids[0].tolist(), model.image_token_id) == [t, 2 * t]
    with torch.no_grad():
        embeddings = model.embed(batch.input_ids, batch.pixel_values, image_plans=batch.image_plans)
        features = model.encode_images(batch.pixel_values)
        slots = batch.input_ids == model.image_token_id
        torch.testing.assert_close(embeddings[0, slots[0]], features[:3].reshape(-1, features.shape[-1]))
        torch.testing.assert_close(embeddings[1, slots[1]], features[3:].reshape(-1, features.shape[-1]))
        out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                    image_plans=batch.image_plans)
    assert torch.isfinite(out.loss) and out.num_label_tokens > 0
    generated = model.generate([build_prompt("What is it?", [wide])], GenerationConfig(max_new_tokens=2))
    assert generated[0].prompt_tokens > 2 * t and len(generated[0].token_ids) <= 2


def test_plans_that_disagree_with_the_batch_are_errors(model, images):
    t = model.tokens_per_image
    batch = model.prepare([qa([images[1], images[0]])])  # 3t slots, 3 views
    pixels = batch.pixel_values
    with pytest.raises(ImageSlotError, match=rf"{3 * t} image slots .* 2 images of {t}, {t + 1} tokens = {2 * t + 1}"):
        model.embed(batch.input_ids, pixels[:2], image_plans=[ImagePlan(1, t), ImagePlan(1, t + 1)])
    with pytest.raises(ImageSlotError, match="plans take 3 views but the batch holds 2"):
        model.embed(batch.input_ids, pixels[:2], image_plans=batch.image_plans)
    with pytest.raises(ImageSlotError, match=rf"image 1 .* fills {2 * t} slots but its 1 view\(s\) encode to {t}"):
        model.embed(batch.input_ids, pixels[:2], image_plans=[ImagePlan(1, t), ImagePlan(1, 2 * t)])
    with pytest.raises(ImageSlotError, match=rf"{3 * t} image slots .* 2 images x {t} tokens per image"):
        model.embed(batch.input_ids, pixels[:2])  # no plans: every view is an image of the fixed size


def test_the_feature_cache_refuses_plans_of_several_views(tmp_path, monkeypatch):
    # every image seen twice: a cache row holds one view, so the stage must say so before training
    monkeypatch.setattr(SingleViewPlanner, "plan", lambda self, image: ImagePlan(views=2, tokens=2 * self.tokens))
    config = tiny_config(tmp_path, "stages.align.feature_cache=true")
    config.stages = config.stages[:1]
    with pytest.raises(ValueError, match="feature cache holds one view per image"):
        train(config)


@dataclass(frozen=True)
class SumThenViews:
    """Test-only layout: one token, the sum of every view's features, before the views' own tokens."""

    def num_tokens(self, tokens_per_view: int) -> int:
        return 1 + 2 * tokens_per_view

    def arrange(self, features: torch.Tensor, image_newline: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([features.sum((0, 1))[None], features.flatten(0, 1)])


@dataclass(frozen=True)
class TwiceWithSum:
    tokens_per_view: int

    def plan(self, image) -> ImagePlan:
        return ImagePlan(views=2, tokens=1 + 2 * self.tokens_per_view, layout=SumThenViews())

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        return [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


def test_a_layout_arranges_its_views_and_the_check_counts_its_tokens(model, images):
    t = model.tokens_per_image
    model.encoder.planner = TwiceWithSum(t)
    batch = model.prepare([qa([images[0]]), qa([images[2]], "And this?")])
    assert slot_runs(batch.input_ids[0].tolist(), model.image_token_id) == [1 + 2 * t]
    with torch.no_grad():
        embeddings = model.embed(batch.input_ids, batch.pixel_values, image_plans=batch.image_plans)
        features = model.encode_images(batch.pixel_values)
    slots = batch.input_ids == model.image_token_id
    torch.testing.assert_close(embeddings[1, slots[1]][0], features[2:].sum((0, 1)))
    torch.testing.assert_close(embeddings[1, slots[1]][1:], features[2:].flatten(0, 1))
    with pytest.raises(ImageSlotError, match=rf"image 0 .* fills {2 * t} slots but its layout arranges its 2 views "
                                             rf"into {1 + 2 * t}"):
        check_image_slots(2 * t, [ImagePlan(2, 2 * t, SumThenViews())], 2, t)
