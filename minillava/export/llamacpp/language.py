"""The language model as a llama.cpp GGUF: hyper-parameters, tensors in llama.cpp's names, and the vocabulary.

Llama-family (Llama, SmolLM2, Mistral) and Qwen2 (Qwen2, Qwen2.5) decoders. llama.cpp's `llama` architecture
rotates adjacent pairs of each head's dimensions where transformers rotates its two halves, so the query and key
rows of each head are reordered to match (Qwen2's architecture rotates halves, as transformers does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from minillava.export.llamacpp.vocab import Vocab

# transformers model_type -> llama.cpp architecture
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# Per-layer names: transformers (under model.layers.N.) -> llama.cpp (under blk.N.)
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}


class LanguageModelError(ValueError):
    """The language model has something llama.cpp's architectures do not; the message says what."""


def architecture(config) -> str:
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise LanguageModelError(
            f"language model type {kind!r}: the GGUF export writes Llama-family (llama, mistral) and Qwen2 "
            f"decoders; choose one of {sorted(ARCHITECTURES)}, or export with --format hf-llava")
    rope = getattr(config, "rope_scaling", None) or {}
    parameters = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type")) or parameters.get("rope_type", "default")
    if rope_type != "default":
        raise LanguageModelError(f"RoPE scaling {rope_type!r} is not written by this export; only unscaled RoPE")
    if getattr(config, "mlp_bias", False):
        raise LanguageModelError("an MLP with biases has no place in llama.cpp's llama architecture")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", False):
        raise LanguageModelError("sliding-window attention is not written by this export")
    return ARCHITECTURES[kind]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def pairs_from_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from transformers' rotate-half layout to llama.cpp's adjacent pairs:
    per head, row i of the first half and row i of the second become rows 2i and 2i+1."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tensor_type(name: str, array: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
    """Matrices in float16, norms and biases in float32 (what llama.cpp's own converter writes for --outtype f16)."""
    if array.ndim >= 2:
        return array.astype(np.float16), GGMLQuantizationType.F16
    return array.astype(np.float32), GGMLQuantizationType.F32


def gguf_tensors(lm, arch: str) -> dict[str, np.ndarray]:
    """llama.cpp name -> array (float32) for every tensor the decoder needs."""
    config = lm.config
    tied = bool(config.tie_word_embeddings)
    out: dict[str, np.ndarray] = {}
    for key, value in lm.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when output.weight is absent
        array = value.detach().to(torch.float32).cpu().numpy()
        if key in GLOBAL_TENSORS:
            out[GLOBAL_TENSORS[key]] = array
            continue
        parts = key.split(".")
        if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in LAYER_TENSORS:
            if key.endswith("rotary_emb.inv_freq"):
                continue
            raise LanguageModelError(f"tensor {key!r} has no place in llama.cpp's {arch} architecture")
        name = LAYER_TENSORS[".".join(parts[3:])]
        if arch == "llama" and name.startswith(("attn_q.", "attn_k.")):
            heads = config.num_attention_heads if name.startswith("attn_q.") else config.num_key_value_heads
            array = pairs_from_halves(array, heads)
        out[f"blk.{parts[2]}.{name}"] = array
    return out


def write_language_model(lm, vocab: Vocab, path: Path, name: str) -> None:
    """Write the decoder + vocabulary as a float16 GGUF at `path`."""
    config = lm.config
    arch = architecture(config)
    tensors = gguf_tensors(lm, arch)
    n_vocab = tensors["token_embd.weight"].shape[0]
    if len(vocab.tokens) != n_vocab:
        raise LanguageModelError(f"{len(vocab.tokens)} vocabulary entries for {n_vocab} embedding rows")
    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    writer.add_rope_freq_base(float(theta or 10000.0))
    writer.add_vocab_size(n_vocab)
    vocab.write(writer)
    for tensor_name, array in tensors.items():
        data, kind = tensor_type(tensor_name, array)
        writer.add_tensor(tensor_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
