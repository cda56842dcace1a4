"""Image plans: each image's own slot count flows through tokenization."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import pytest
from PIL import Image

from minillava.data.conversation import Conversation, Turn
from minillava.data.image_plan import ImagePlan, SingleViewPlanner
from minillava.data.tokenize import ConversationEncoder
from minillava.model.language import load_tokenizer


@dataclass(frozen=True)
class NamedPlanner:
    """Test-only: slot counts by file name, known without reading any file."""

    tokens: dict[str, int]

    def plan(self, image) -> ImagePlan:
        return ImagePlan(views=1, tokens=self.tokens[str(image)])

    def views(self, image: Image.Image, plan: ImagePlan) -> list[Image.Image]:
        return [image]


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
