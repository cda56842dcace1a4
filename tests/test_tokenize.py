"""Labels: exactly the assistant replies (and their end of turn) are learned; images expand to their slots."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillava.data.conversation import Conversation, SampleError, Turn
from minillava.data.tokenize import IGNORE_INDEX, ConversationEncoder
from minillava.model.language import load_tokenizer

SLOTS = 5
TEXT = st.text(alphabet=st.sampled_from(list("abcxyz ABC,.?!0123456789éü中文\n")), min_size=1, max_size=25).map(
    str.strip).filter(bool)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def encoder(request, tiny_llms) -> ConversationEncoder:
    tokenizer = load_tokenizer(tiny_llms[request.param], "<image>")
    return ConversationEncoder(tokenizer, tokenizer.convert_tokens_to_ids("<image>"), SLOTS)


@st.composite
def conversations(draw) -> Conversation:
    turns = [Turn("system", draw(TEXT))] if draw(st.booleans()) else []
    images = 0
    for _ in range(draw(st.integers(1, 3))):
        question = draw(TEXT)
        where = draw(st.sampled_from(["none", "start", "end"]))
        if where == "start":
            question, images = "<image>\n" + question, images + 1
        elif where == "end":
            question, images = question + " <image>", images + 1
        turns += [Turn("user", question), Turn("assistant", draw(TEXT))]
    return Conversation(turns, images=[f"{i}.png" for i in range(images)])


def learned_spans(sample) -> list[list[int]]:
    spans, current = [], []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations())
def test_learned_tokens_decode_to_exactly_the_replies(encoder, conv):
    sample = encoder.encode(conv)
    replies = [t.content for t in conv.turns if t.role == "assistant"]
    spans = learned_spans(sample)
    assert len(spans) == len(replies)
    for span, reply in zip(spans, replies, strict=True):
        assert span[-1] == encoder.end_of_turn_id  # the end of turn is learned, so the model learns to stop
        assert encoder.tokenizer.decode(span[:-1]) == reply
    assert sample.input_ids.count(encoder.image_token_id) == SLOTS * len(conv.images)


def test_rendered_text_is_the_chat_template(encoder):
    conv = Conversation([Turn("user", "Hi there"), Turn("assistant", "Hello!")])
    sample = encoder.encode(conv)
    expected = encoder.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}], tokenize=False)
    assert encoder.tokenizer.decode(sample.input_ids) == expected


def test_generation_prompt_ends_with_the_assistant_header(encoder):
    conv = Conversation([Turn("user", "<image>\nWhat is it?")], images=["a.png"])
    sample = encoder.encode(conv, add_generation_prompt=True)
    expected = encoder.render(conv.turns, add_generation_prompt=True).replace("<image>", "<image>" * SLOTS)
    assert encoder.tokenizer.decode(sample.input_ids) == expected
    assert all(label == IGNORE_INDEX for label in sample.labels)


def test_placeholder_count_must_match_images(encoder):
    conv = Conversation([Turn("user", "<image><image> two?"), Turn("assistant", "yes")], images=["a.png"])
    with pytest.raises(SampleError, match="2 <image> placeholders but 1 images"):
        encoder.encode(conv)


def test_plain_template_learns_the_caption_after_the_image(encoder):
    conv = Conversation([Turn("user", "<image>\nDescribe."), Turn("assistant", "A red ball.")], images=["a.png"],
                        template="plain")
    sample = encoder.encode(conv)
    assert sample.input_ids[:SLOTS] == [encoder.image_token_id] * SLOTS
    (span,) = learned_spans(sample)
    assert span == sample.input_ids[SLOTS:]
    assert encoder.tokenizer.decode(span[:-1]) == "A red ball." and span[-1] == encoder.tokenizer.eos_token_id


def test_plain_generation_prompt_is_the_image_alone(encoder):
    # Ending the prompt with the caption's eos made a stage-1 model start its caption after an end of text.
    conv = Conversation([Turn("user", "<image>")], images=["a.png"], template="plain")
    sample = encoder.encode(conv, add_generation_prompt=True)
    assert sample.input_ids == [encoder.image_token_id] * SLOTS
    assert sample.num_labels == 0


def test_truncation_never_cuts_inside_an_image(encoder):
    conv = Conversation([Turn("user", "Look <image> and <image> now"), Turn("assistant", "ok")],
                        images=["a.png", "b.png"])
    full = encoder.encode(conv)
    second = [i for i, t in enumerate(full.input_ids) if t == encoder.image_token_id][SLOTS]
    encoder.max_length = second + 2  # would cut the second image's slots
    try:
        with pytest.raises(SampleError, match="no assistant reply left"):
            encoder.encode(conv)
        last_label = max(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
        encoder.max_length = last_label  # cuts only the end of the reply
        cut = encoder.encode(conv)
        assert len(cut.images) == 2 and cut.num_labels == full.num_labels - 1
    finally:
        encoder.max_length = None


def test_truncation_drops_the_images_it_cuts(encoder):
    conv = Conversation([Turn("user", "A"), Turn("assistant", "first reply"), Turn("user", "<image> B"),
                         Turn("assistant", "second")], images=["a.png"])
    full = encoder.encode(conv)
    first_slot = full.input_ids.index(encoder.image_token_id)
    encoder.max_length = first_slot + 2
    try:
        cut = encoder.encode(conv)
    finally:
        encoder.max_length = None
    assert cut.images == [] and encoder.image_token_id not in cut.input_ids
    assert len(cut.input_ids) == first_slot
