"""Training objectives: registry entries that turn a batch into (mean loss, units) through the forward."""

from __future__ import annotations

import torch

from minillava.data.conversation import Conversation, Turn
from minillava.model import MiniLlava
from minillava.train.config import StageConfig
from minillava.train.objectives import OBJECTIVES, build_objective, label_tokens


def test_sft_is_the_replies_cross_entropy_over_their_label_tokens(tiny_towers, tiny_llms, images):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]).eval()
    conversations = [Conversation([Turn("user", "<image>\nWhat is it?"), Turn("assistant", answer)], images=[im])
                     for answer, im in (("a red box", images[0]), ("green", images[1]))]
    batch = model.prepare(conversations)
    forward = lambda b: model(b.input_ids, b.attention_mask, b.labels, b.pixel_values)  # noqa: E731
    sft = build_objective(StageConfig())
    with torch.no_grad():
        result = sft.loss(forward, batch, None)
        out = forward(batch)
    assert sft.name == "sft" and not sft.pairs and not sft.reference
    assert result.units == sft.count(batch) == label_tokens(batch) == out.num_label_tokens > 0
    assert torch.equal(result.loss, out.loss) and result.stats == {}
    assert OBJECTIVES.names() == ["dpo", "sft"]
