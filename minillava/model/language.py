"""The language model and its tokenizer: any AutoModelForCausalLM, or the embedded SmolLM2."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from minillava.model.embedded import SMOLLM2_NAME, TINY_LLAMA_NAME, smollm2_folder, tiny_llama_folder

log = logging.getLogger(__name__)

EMBEDDED_LLMS = {SMOLLM2_NAME: smollm2_folder, TINY_LLAMA_NAME: tiny_llama_folder}

# For base models without a chat template: role-tagged lines, each reply closed by the eos token.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def resolve_llm(spec: str, base: str | Path | None = None) -> str:
    """An embedded name, a folder (relative paths against `base`, the model folder) or a hub id."""
    if spec in EMBEDDED_LLMS:
        return str(EMBEDDED_LLMS[spec]())
    if base is not None and (Path(base) / spec).is_dir():
        return str(Path(base) / spec)
    return spec


def load_language_model(spec: str, dtype: torch.dtype = torch.float32, base: str | Path | None = None
                        ) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(resolve_llm(spec, base), dtype=dtype)
    return model.eval()


def set_attention(model: PreTrainedModel, implementation: str) -> None:
    """Switch the attention kernel ("sdpa", "eager") of a loaded model; older transformers without the switch keep
    the kernel they loaded with, and say so."""
    if getattr(model.config, "_attn_implementation", None) == implementation:
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        log.warning("transformers %s cannot switch attention after loading; keeping %s (asked for %s)",
                    transformers.__version__, model.config._attn_implementation, implementation)


def load_tokenizer(source: str | Path, image_token: str) -> PreTrainedTokenizerBase:
    """The tokenizer with `image_token` as a special token, a pad token and a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer
