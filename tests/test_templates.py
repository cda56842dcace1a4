"""A model folder's chat template can replace its language model's: the same text in training and generation."""

from __future__ import annotations

import pytest

from minillava.data.conversation import Conversation, Turn
from minillava.model import MiniLlava, build_prompt
from minillava.model.templates import CHATML, resolve_chat_template


def test_chatml_drops_the_default_system_turn_and_survives_save_and_load(tiny_towers, tiny_llms, tmp_path):
    own = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    chatml = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"], chat_template="chatml")
    prompt = build_prompt("What is this?", [])
    with_default = own.encoder.encode(prompt, add_generation_prompt=True).input_ids
    without = chatml.encoder.encode(prompt, add_generation_prompt=True).input_ids
    text = chatml.tokenizer.decode(without)
    assert "system" in own.tokenizer.decode(with_default) and "system" not in text
    assert text == "<|im_start|>user\nWhat is this?<|im_end|>\n<|im_start|>assistant\n"
    chatml.save_pretrained(tmp_path / "model")
    loaded = MiniLlava.from_pretrained(tmp_path / "model")
    assert loaded.config.chat_template == CHATML
    assert loaded.encoder.encode(prompt, add_generation_prompt=True).input_ids == without
    qa = Conversation([Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hello")])
    sample = loaded.encoder.encode(qa)
    assert loaded.tokenizer.decode(sample.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_chat_template_names_or_files(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }}")
    assert resolve_chat_template(str(path)) == "{{ messages[0]['content'] }}"
    assert resolve_chat_template("chatml") == CHATML
    with pytest.raises(ValueError, match="neither a known name"):
        resolve_chat_template("chatml-typo")
