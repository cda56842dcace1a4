"""Independent turns: each question an attention block over the shared image prefix, learned as if asked alone."""

from __future__ import annotations

import pytest
import torch

from minillava.data.collate import PAD_BLOCK, block_positions, collate
from minillava.data.conversation import Conversation, SampleError, Turn
from minillava.data.tokenize import IGNORE_INDEX, SHARED_BLOCK
from minillava.model import MiniLlava

QUESTIONS = [("What color is the box?", "red"), ("How many boxes are there?", "2"),
             ("Is there a blue circle in the image?", "no")]


def multi_turn(image, pairs=QUESTIONS, system: str | None = None) -> Conversation:
    turns = [Turn("system", system)] if system else []
    for k, (question, answer) in enumerate(pairs):
        turns += [Turn("user", ("<image>\n" if k == 0 else "") + question), Turn("assistant", answer)]
    return Conversation(turns, images=[image])


def single(image, question, answer, system: str | None = None) -> Conversation:
    turns = [Turn("system", system)] if system else []
    return Conversation(turns + [Turn("user", "<image>\n" + question), Turn("assistant", answer)], images=[image])


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_towers, tiny_llms) -> MiniLlava:
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]).eval()
    model.language_model.set_attn_implementation(request.param)
    return model


def test_blocks_hold_the_prefix_once_and_each_question_alone(model, images):
    encoder = model.encoder
    sample = encoder.encode(multi_turn(images[0]), independent_turns=True)
    alone = [encoder.encode(single(images[0], q, a)) for q, a in QUESTIONS]
    shared = sample.blocks.count(SHARED_BLOCK)
    assert sample.input_ids[:shared] == alone[0].input_ids[:shared]
    assert sample.input_ids[shared - 1] == model.image_token_id  # the prefix ends with the image's last slot
    for k, one in enumerate(alone, start=1):
        ids = [t for t, b in zip(sample.input_ids, sample.blocks, strict=True) if b in (SHARED_BLOCK, k)]
        labels = [t for t, b in zip(sample.labels, sample.blocks, strict=True) if b in (SHARED_BLOCK, k)]
        assert ids == one.input_ids and labels == one.labels
    positions = block_positions(sample.blocks)
    for k, one in enumerate(alone, start=1):
        assert [p for p, b in zip(positions, sample.blocks, strict=True) if b == k] == list(
            range(shared, len(one.input_ids)))


def test_each_block_computes_what_its_question_alone_computes(model, images):
    """Logits and loss of every block equal those of its one-question conversation: no answer leaks."""
    sample = model.encoder.encode(multi_turn(images[1], system="Be brief."), independent_turns=True)
    pixels = model.pixel_values(sample.images)
    batch = collate([sample.input_ids], [sample.labels], model.tokenizer.pad_token_id, [pixels],
                    blocks=[sample.blocks])
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                    return_logits=True, block_ids=batch.block_ids, position_ids=batch.position_ids)
        blocks = batch.block_ids[0]
        losses, counts = [], []
        for k, (q, a) in enumerate(QUESTIONS, start=1):
            alone = model.prepare([single(images[1], q, a, system="Be brief.")])
            ref = model(alone.input_ids, alone.attention_mask, alone.labels, alone.pixel_values, return_logits=True)
            keep = (blocks == SHARED_BLOCK) | (blocks == k)
            torch.testing.assert_close(out.logits[0][keep], ref.logits[0], atol=1e-4, rtol=1e-4)
            losses.append(float(ref.loss) * ref.num_label_tokens)
            counts.append(ref.num_label_tokens)
    assert out.num_label_tokens == sum(counts)
    assert float(out.loss) == pytest.approx(sum(losses) / sum(counts), rel=1e-4)


def test_padded_batches_mix_blocks_and_plain_samples(model, images):
    blocked = model.encoder.encode(multi_turn(images[0]), independent_turns=True)
    plain = model.encoder.encode(single(images[2], "What is this?", "A blue square."))
    pixels = [model.pixel_values(blocked.images), model.pixel_values(plain.images)]
    batch = collate([blocked.input_ids, plain.input_ids], [blocked.labels, plain.labels],
                    model.tokenizer.pad_token_id, pixels, blocks=[blocked.blocks, plain.blocks])
    assert plain.blocks is None
    assert (batch.block_ids[1, : len(plain.input_ids)] == SHARED_BLOCK).all()
    assert (batch.block_ids[1, len(plain.input_ids):] == PAD_BLOCK).all()
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, return_logits=True,
                    block_ids=batch.block_ids, position_ids=batch.position_ids)
        ref = model.prepare([single(images[2], "What is this?", "A blue square.")])
        alone = model(ref.input_ids, ref.attention_mask, pixel_values=ref.pixel_values, return_logits=True)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits[1, : len(plain.input_ids)], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_max_length_keeps_whole_blocks(tiny_towers, tiny_llms, images):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    full = model.encoder.encode(multi_turn(images[0]), independent_turns=True)
    first_two = max(i for i, b in enumerate(full.blocks) if b == 2) + 1
    model.encoder.max_length = first_two + 1
    cut = model.encoder.encode(multi_turn(images[0]), independent_turns=True)
    assert cut.input_ids == full.input_ids[:first_two] and max(cut.blocks) == 2
    assert all(label == IGNORE_INDEX for label in full.labels[:3])


def test_independent_turns_refuse_images_after_the_first_question(model, images):
    late = Conversation([Turn("user", "What is this?"), Turn("assistant", "a box"),
                         Turn("user", "<image>\nAnd now?"), Turn("assistant", "red")], images=[images[0]])
    with pytest.raises(SampleError, match="at the start of the first user turn"):
        model.encoder.encode(late, independent_turns=True)
    odd = Conversation([Turn("user", "<image>\nHi"), Turn("assistant", "a"), Turn("user", "more")],
                       images=[images[0]])
    with pytest.raises(SampleError, match="alternating"):
        model.encoder.encode(odd, independent_turns=True)
