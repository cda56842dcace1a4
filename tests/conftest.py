"""Tiny random-initialised components saved to folders and loaded by path, as a user's checkpoints are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from minillava.model.embedded import smollm2_folder

# Qwen2.5's own template adds a default system turn, as the real checkpoints do.
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
             patch_size=8)
LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
CLIP_PREPROCESSOR = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
                     "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3}
SIGLIP_PREPROCESSOR = {"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32},
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}
DINOV2_PREPROCESSOR = {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 36},
                       "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                       "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _save_tower(folder: Path, model, preprocessor: dict) -> str:
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_towers(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    return {
        "clip": _save_tower(root / "clip", CLIPVisionModel(CLIPVisionConfig(**TOWER)), CLIP_PREPROCESSOR),
        "siglip": _save_tower(root / "siglip", SiglipVisionModel(SiglipVisionConfig(**TOWER)), SIGLIP_PREPROCESSOR),
        "dinov2": _save_tower(root / "dinov2", Dinov2Model(Dinov2Config(**TOWER)), DINOV2_PREPROCESSOR),
    }


@pytest.fixture(scope="session")
def smollm2_tokenizer_folder() -> Path:
    return smollm2_folder()


@pytest.fixture(scope="session")
def tiny_llms(tmp_path_factory, smollm2_tokenizer_folder) -> dict[str, str]:
    """Tiny Llama (SmolLM2's tokenizer and template), Qwen2 (Qwen's template), GPT-2 (no template)."""
    root = tmp_path_factory.mktemp("llms")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_folder)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    folders = {}
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **LM,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=2))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab + 64, **LM, eos_token_id=2))  # padded vocab, as Qwen's
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                                      eos_token_id=0))
    for name, model, template in (("llama", llama, None), ("qwen2", qwen, QWEN_TEMPLATE), ("gpt2", gpt2, "")):
        folder = root / name
        model.save_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_folder)
        if template is not None:
            tok.chat_template = template or None
        if name == "gpt2":
            tok.eos_token = "<|endoftext|>"
        tok.save_pretrained(folder)
        if name == "gpt2":  # a base model: no chat template at all
            for leftover in folder.glob("chat_template.*"):
                leftover.unlink()
        folders[name] = str(folder)
    return folders


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Three small images of different sizes and colours."""
    return [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (24, 48), (20, 180, 40)),
            Image.new("RGB", (32, 32), (10, 10, 220))]
