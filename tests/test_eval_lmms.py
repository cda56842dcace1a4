"""The lmms-eval plugin's logic on a tiny model, without lmms-eval; against its real base class when installed."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from minillava.eval import lmms_plugin
from minillava.eval.lmms_plugin import LmmsMethods, generation_config, make_prompt
from minillava.model import GenerationConfig, MiniLlava, build_prompt


class Request:  # what lmms-eval's Instance offers the model: .args
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def plugin(tiny_towers, tiny_llms):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    methods = LmmsMethods(model=model, batch_size=2, max_new_tokens=5)
    red, blue = Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 200))
    methods.task_dict = {"t": {"test": [{"img": red, "q": "Colour?"}, {"img": blue, "q": "Shape?"},
                                        {"img": None, "q": "Hi"}]}}
    return methods


def visual(doc):
    return [doc["img"]] if doc["img"] is not None else []


def test_generation_kwargs_are_translated():
    config = generation_config({"until": ["\n\n", "Q:"], "max_new_tokens": 7, "temperature": 0.5, "do_sample": False,
                                "top_p": None}, 99)
    assert (config.stop, config.max_new_tokens, config.temperature, config.top_p) == (["\n\n", "Q:"], 7, 0.0, 1.0)
    config = generation_config({"until": "###", "temperature": 0.7, "top_p": 0.9}, 11)
    assert (config.stop, config.max_new_tokens, config.temperature, config.top_p) == (["###"], 11, 0.7, 0.9)


def test_prompt_keeps_matching_image_markers_only():
    image = Image.new("RGB", (8, 8))
    assert make_prompt("<image>\nWhat?", [image]).turns[-1].content == "<image>\nWhat?"
    assert make_prompt("<image> <image> What?", [image]).turns[-1].content == "<image>\nWhat?"
    assert make_prompt("<image>What?", []).turns[-1].content == "What?"


def test_generate_until_batches_by_kwargs_and_keeps_order(plugin):
    greedy, other = {"max_new_tokens": 4}, {"max_new_tokens": 3, "until": ["."]}
    requests = [Request("Colour?", greedy, visual, 0, "t", "test"), Request("Shape?", other, visual, 1, "t", "test"),
                Request("Hi", greedy, visual, 2, "t", "test")]
    out = plugin.generate_until(requests)
    docs = plugin.task_dict["t"]["test"]
    model = plugin.model
    expected = [
        model.generate([build_prompt("Colour?", [docs[0]["img"]])], GenerationConfig(max_new_tokens=4))[0].text,
        model.generate([build_prompt("Shape?", [docs[1]["img"]])], GenerationConfig(max_new_tokens=3,
                                                                                     stop=["."]))[0].text,
        model.generate([build_prompt("Hi")], GenerationConfig(max_new_tokens=4))[0].text,
    ]
    assert out == expected


def test_loglikelihood_is_the_sum_of_continuation_logprobs(plugin):
    model = plugin.model
    image = plugin.task_dict["t"]["test"][0]["img"]
    greedy = model.generate([build_prompt("Colour?", [image])], GenerationConfig(max_new_tokens=1))[0]
    continuation = model.tokenizer.decode(greedy.token_ids)
    # (one token: a random model's several greedy tokens need not survive decode + re-tokenisation)
    assert model.tokenizer(continuation, add_special_tokens=False).input_ids == greedy.token_ids
    (logprob, is_greedy), (other_logprob, other_greedy) = plugin.loglikelihood([
        Request("Colour?", continuation, visual, 0, "t", "test"),
        Request("Colour?", lambda doc: " zebra", visual, 0, "t", "test")])
    assert is_greedy and not other_greedy
    # by hand: one forward over prompt + continuation, log-softmax at each continuation position
    batch = model.prepare([build_prompt("Colour?", [image])], add_generation_prompt=True)
    target = model.tokenizer(" zebra", add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([batch.input_ids, target], 1)
    with torch.no_grad():
        logits = model(ids, torch.ones_like(ids), None, batch.pixel_values, return_logits=True).logits
    start = batch.input_ids.shape[1]
    by_hand = sum(logits[0, start - 1 + i].log_softmax(-1)[t] for i, t in enumerate(target[0].tolist()))
    assert other_logprob == pytest.approx(float(by_hand), abs=1e-4)
    assert other_logprob < logprob <= 0


def test_multi_round_asks_the_task_for_each_round(plugin):
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((round_idx, list(previous_output), previous_round_info))
        terminal = round_idx >= 3
        return [doc["img"]], f"Round {round_idx}?", terminal, previous_output, {"seen": round_idx}

    out = plugin.generate_until_multi_round([Request("First?", {"max_new_tokens": 2}, visual, doc_to_text, 0, "t",
                                                     "test")])
    assert len(out) == 1 and len(out[0]) == 3  # rounds 0, 1, 2; round 3 says terminal
    assert [c[0] for c in calls] == [1, 2, 3]
    assert calls[1][1] == out[0][:2] and calls[1][2] == {"seen": 1}


def test_module_imports_without_lmms_eval_and_is_registered_in_pyproject():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    entry = re.search(r'\[project\.entry-points\."lmms_eval\.models"\]\nminillava = "([^"]+)"', pyproject).group(1)
    module, attribute = entry.split(":")
    assert importlib.import_module(module) is lmms_plugin and callable(getattr(lmms_plugin, attribute))
    if importlib.util.find_spec("lmms_eval") is None:
        with pytest.raises(ModuleNotFoundError, match="lmms_eval"):
            lmms_plugin.MiniLlavaLmms  # noqa: B018
    with pytest.raises(AttributeError):
        lmms_plugin.Nothing  # noqa: B018


def test_subclass_of_the_real_lmms_base_class(plugin):
    pytest.importorskip("lmms_eval.api.model", reason="lmms-eval is not installed (it needs its own environment)")
    from lmms_eval.api.model import lmms
    from lmms_eval.models import get_model

    cls = lmms_plugin.MiniLlavaLmms
    assert issubclass(cls, lmms) and not cls.__abstractmethods__
    assert get_model("minillava") is cls  # found through the entry point
    instance = cls(model=plugin.model, batch_size=2, max_new_tokens=3)
    assert instance.rank == 0 and instance.world_size == 1
    assert "lmms_eval" in sys.modules
