"""`minillava chat`: one-shot answers and a piped multi-turn session with /image, /reset and /quit."""

from __future__ import annotations

import io

import pytest
import torch

from minillava.cli import main
from minillava.data.conversation import Conversation, Turn
from minillava.model import GenerationConfig, MiniLlava, build_prompt

TOKENS = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_towers, tiny_llms):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    torch.manual_seed(0)
    for weight in model.language_model.parameters():  # larger weights: replies differ by prompt and image
        torch.nn.init.normal_(weight, std=0.2)
    model.config.stored = ["projector", "language_model"]  # the changed LM is saved with the model
    folder = tmp_path_factory.mktemp("chat") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_dir) -> MiniLlava:
    return MiniLlava.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def red(tmp_path_factory, images):
    path = tmp_path_factory.mktemp("chat-images") / "red.png"
    images[0].save(path)
    return path


def reply(model, conversation: Conversation) -> str:
    return model.generate([conversation], GenerationConfig(max_new_tokens=TOKENS))[0].text


def test_a_prompt_is_answered_once(model_dir, model, red, images, capsys):
    assert main(["chat", "--model", str(model_dir), "--image", str(red), "--max-new-tokens", str(TOKENS),
                 "What is it?"]) == 0
    assert capsys.readouterr().out == reply(model, build_prompt("What is it?", [images[0]])) + "\n"


def test_piped_session_with_commands(model_dir, model, red, images, monkeypatch, capsys):
    script = ["/image " + str(red), "What is it?", "And then?", "/bogus", "/image nowhere.png", "/reset",
              "What is it?", "/quit", "never read"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(script) + "\n"))
    assert main(["chat", "--model", str(model_dir), "--max-new-tokens", str(TOKENS)]) == 0
    out = capsys.readouterr()
    first = reply(model, build_prompt("What is it?", [images[0]]))
    second = reply(model, Conversation([Turn("user", "<image>\nWhat is it?"), Turn("assistant", first),
                                        Turn("user", "And then?")], images=[images[0]]))
    after_reset = reply(model, build_prompt("What is it?"))
    assert out.out == f"{first}\n{second}\n{after_reset}\n"
    assert len({first, second, after_reset}) == 3  # the image and the history each changed the answer
    assert "image attached" in out.err and "conversation cleared" in out.err
    assert "unknown command '/bogus'" in out.err and "nowhere.png: no such file" in out.err
