"""The inference fast paths change speed only: oneDNN float32 linears and the preallocated KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import DynamicCache

from minillava.data.conversation import Conversation, Turn
from minillava.model import MiniLlava
from minillava.model.cpu_linear import ONEDNN_LINEAR, OneDNNLinear, use_onednn, use_onednn_linears
from minillava.model.kv_cache import PreallocatedCache
from minillava.model.language import set_attention

needs_onednn = pytest.mark.skipif(not ONEDNN_LINEAR, reason="this torch build has no oneDNN linear")


def linear_pair(bias: bool = True) -> tuple[nn.Linear, OneDNNLinear]:
    torch.manual_seed(0)
    plain = nn.Linear(48, 80, bias=bias)
    fast = nn.Linear(48, 80, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert use_onednn_linears(fast) == (1 if ONEDNN_LINEAR else 0)
    return plain, fast


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 48), (8, 48), (2, 7, 48), (300, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_linear_at_inference(shape, bias):
    plain, fast = linear_pair(bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        assert use_onednn(x, fast.weight, fast.bias)
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_linear_falls_back_where_it_cannot_serve():
    plain, fast = linear_pair()
    x = torch.randn(4, 48, requires_grad=True)
    assert not use_onednn(x, fast.weight, fast.bias)  # gradients wanted: oneDNN's operator has no backward
    fast(x).square().sum().backward()
    grads = fast.weight.grad.clone(), x.grad.clone()
    x.grad = None
    plain(x).square().sum().backward()
    torch.testing.assert_close(grads, (plain.weight.grad, x.grad))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16  # autocast keeps its say
    with torch.no_grad():
        assert not use_onednn(x.bfloat16(), fast.weight.bfloat16(), None)
        assert fast(torch.empty(0, 48)).shape == (0, 80)


@needs_onednn
def test_model_linears_keep_their_state_ties_and_lora(tiny_towers, tiny_llms):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is OneDNNLinear for m in linears)
    reference = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    assert model.state_dict().keys() == reference.state_dict().keys()
    lm = model.language_model
    if lm.config.tie_word_embeddings:
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    lora = get_peft_model(lm, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.randint(0, 100, (2, 6))
    lora(input_ids=ids).logits.sum().backward()
    trained = [p for n, p in lora.named_parameters() if "lora_" in n]
    assert trained and all(p.grad is not None for p in trained)


def test_preallocated_cache_equals_dynamic_cache_and_grows(tiny_llms):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_llms["llama"]).eval()
    ids = torch.randint(0, 100, (2, 9))
    steps = torch.randint(0, 100, (2, 6))

    def run(cache):
        logits = [lm(input_ids=ids, past_key_values=cache, use_cache=True).logits]
        for i in range(steps.shape[1]):
            logits.append(lm(input_ids=steps[:, i:i + 1], past_key_values=cache, use_cache=True).logits)
        return torch.cat(logits, dim=1), cache.get_seq_length()

    with torch.inference_mode():
        expected, length = run(DynamicCache())
        for capacity in (ids.shape[1] + steps.shape[1], 4):  # exact size; too small, so the buffers grow
            got, got_length = run(PreallocatedCache(capacity))
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert got_length == length == ids.shape[1] + steps.shape[1]


def test_linear_reference_is_the_functional_one():
    """The fallback is F.linear itself, so every other dtype and device behaves exactly as before."""
    plain, fast = linear_pair()
    x = torch.randn(3, 48, dtype=torch.float64)
    torch.testing.assert_close(fast.double()(x), F.linear(x, plain.weight.double(), plain.bias.double()),
                               rtol=0, atol=0)


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_eager_attention_trains_as_sdpa_does_and_is_not_saved(tiny_towers, tiny_llms, images, llm, tmp_path):
    """A stage's `attention: eager` changes the kernel only: same loss and gradients on a padded batch, and the
    saved model loads with the default kernel."""
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms[llm])
    lm = model.language_model
    default = lm.config._attn_implementation
    conversations = [Conversation([Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A red square.")],
                                  images=[images[0]]),
                     Conversation([Turn("user", "Hi"), Turn("assistant", "Hello there, how can I help?")])]
    batch = model.prepare(conversations)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in lm.parameters()]

    reference = loss_and_grads()
    set_attention(lm, "eager")
    assert lm.config._attn_implementation == "eager"
    torch.testing.assert_close(loss_and_grads(), reference, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    assert MiniLlava.from_pretrained(tmp_path / "saved").language_model.config._attn_implementation == default
