"""The vision tower + projector as an `mmproj` GGUF that llama.cpp's multimodal library (mtmd) loads.

It runs the LLaVA graph (projector type "mlp"): patch embedding (+ CLS), position embeddings, an optional
pre-layernorm, the encoder layers up to the deepest feature layer, the feature layers' hidden states stacked
along the width, CLS dropped, then linear -> GELU -> linear. What it cannot express is refused with the reason:
a CNN tower (EfficientNet), DINOv2, other projectors, keeping the CLS token, a non-square image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from minillava.export.keys import tower_key_to_hf

TOWERS = ("clip", "siglip")
# Why the other encoders have no mmproj, by their exact names.
UNSUPPORTED_TOWERS = {
    "efficientnet-lite0": "a CNN: mtmd's graphs are vision transformers",
    "dinov2": "mtmd's LLaVA graph is CLIP/SigLIP-shaped (no layer scale, no register tokens)",
}
PROJECTOR = "mlp2x_gelu"  # llama.cpp's "mlp": mm.0 -> GELU -> mm.2
# The tower's feed-forward activation -> the mmproj flag that selects it in llama.cpp (none: quick GELU).
ACTIVATION_FLAGS = {"quick_gelu": None, "gelu_pytorch_tanh": "clip.use_gelu", "gelu_new": "clip.use_gelu"}
# transformers' per-layer names (under vision_model.encoder.layers.N.) -> mtmd's (under v.blk.N.)
LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out", "layer_norm1": "ln1", "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}
EMBEDDING_TENSORS = {
    "vision_model.embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "vision_model.embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "vision_model.embeddings.position_embedding.weight": "v.position_embd.weight",
    "vision_model.embeddings.class_embedding": "v.class_embd",
    "vision_model.pre_layrnorm.weight": "v.pre_ln.weight",
    "vision_model.pre_layrnorm.bias": "v.pre_ln.bias",
}


class MmprojError(ValueError):
    """The tower or projector has no mtmd equivalent; the message says what and what to use instead."""


@dataclass
class MmprojPlan:
    tower_kind: str
    feature_layers: list[int]  # non-negative hidden-state indices (0 = the encoder's input), ascending
    activation_flag: str | None
    image_size: int
    patch_size: int


def plan_mmproj(model) -> MmprojPlan:
    if model.config.anyres is not None:
        raise MmprojError("an AnyRes model: this mmproj is LLaVA-1.5's single-view graph; AnyRes is not exported yet")
    kind = model.config.vision.name
    if kind not in TOWERS:
        why = UNSUPPORTED_TOWERS.get(kind, "mtmd's LLaVA graph is CLIP/SigLIP-shaped")
        raise MmprojError(f"vision encoder {kind!r} cannot be written as an mmproj GGUF ({why}); train with a "
                          f"CLIP or SigLIP tower for llama.cpp, or export the tower with --format onnx")
    if model.config.projector != PROJECTOR:
        raise MmprojError(f"projector {model.config.projector!r}: llama.cpp's LLaVA projector is linear -> GELU -> "
                          f"linear over every patch ({PROJECTOR}); train with --projector {PROJECTOR}")
    vision = model.vision
    if vision.num_prefix_tokens != vision.drop:
        raise MmprojError("the model keeps the CLS token (select 'full'); llama.cpp's LLaVA graph always drops it; "
                          "train with select 'default'")
    config = vision.tower.config
    height, width = vision.transform.size
    if height != width:
        raise MmprojError(f"a {height}x{width} input: llama.cpp's LLaVA graph takes square images only")
    if height != config.image_size:
        raise MmprojError(f"the preprocessor makes {height}x{height} images for a tower built for "
                          f"{config.image_size}: llama.cpp cannot interpolate position embeddings here")
    flag = config.hidden_act
    if flag not in ACTIVATION_FLAGS:
        raise MmprojError(f"tower activation {flag!r} has no mtmd equivalent (quick_gelu, gelu_pytorch_tanh)")
    states = config.num_hidden_layers + 1
    layers = [layer if layer >= 0 else states + layer for layer in vision.layers]
    if layers != sorted(set(layers)):
        raise MmprojError(f"feature layers {vision.layers}: mtmd stacks layers in ascending order; list them so")
    return MmprojPlan(kind, layers, ACTIVATION_FLAGS[flag], height, config.patch_size)


def mmproj_tensors(model, plan: MmprojPlan) -> dict[str, np.ndarray]:
    """mtmd name -> float32 array: the embeddings, the layers the deepest feature layer needs, the projector."""
    deepest = max(plan.feature_layers)
    out: dict[str, np.ndarray] = {}
    for key, value in model.vision.tower.state_dict().items():
        key = tower_key_to_hf(key, plan.tower_kind)
        array = value.detach().to(torch.float32).cpu().numpy()
        if key in EMBEDDING_TENSORS:
            out[EMBEDDING_TENSORS[key]] = array
            continue
        parts = key.split(".")
        if parts[:3] == ["vision_model", "encoder", "layers"]:
            index, module, leaf = int(parts[3]), ".".join(parts[4:-1]), parts[-1]
            if index >= max(deepest, 1):
                continue  # past the deepest feature layer: never run
            out[f"v.blk.{index}.{LAYER_TENSORS[module]}.{leaf}"] = array
        # post_layernorm and SigLIP's pooling head act on the pooled output, which LLaVA never reads
    width = model.vision.tower.config.hidden_size
    ffn = model.vision.tower.config.intermediate_size
    if ffn == width:
        # mtmd swaps ffn_up/ffn_down of LLaVA files whose down matrix reads `width` inputs (old converters wrote
        # them the wrong way round); with a square FFN every file looks so, so write them swapped back.
        for name in [n for n in out if ".ffn_up." in n]:
            down = name.replace(".ffn_up.", ".ffn_down.")
            out[name], out[down] = out[down], out[name]
    body = model.projector.body
    for index in (0, 2):
        out[f"mm.{index}.weight"] = body[index].weight.detach().float().cpu().numpy()
        out[f"mm.{index}.bias"] = body[index].bias.detach().float().cpu().numpy()
    return out


def write_mmproj(model, plan: MmprojPlan, path: Path, name: str) -> None:
    """Write the tower + projector as a float16 mmproj GGUF at `path`."""
    config = model.vision.tower.config
    transform = model.vision.transform
    tensors = mmproj_tensors(model, plan)
    writer = GGUFWriter(str(path), "clip")
    writer.add_name(name)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    if plan.activation_flag:
        writer.add_bool(plan.activation_flag, True)
    writer.add_uint32("clip.vision.image_size", plan.image_size)
    writer.add_uint32("clip.vision.patch_size", plan.patch_size)
    writer.add_uint32("clip.vision.embedding_length", config.hidden_size)
    writer.add_uint32("clip.vision.feed_forward_length", config.intermediate_size)
    writer.add_uint32("clip.vision.block_count", max(max(plan.feature_layers), 1))
    writer.add_uint32("clip.vision.projection_dim", model.projector.body[2].weight.shape[0])
    writer.add_uint32("clip.vision.attention.head_count", config.num_attention_heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", config.layer_norm_eps)
    writer.add_array("clip.vision.feature_layer", plan.feature_layers)
    writer.add_array("clip.vision.image_mean", [float(v) for v in transform.mean])
    writer.add_array("clip.vision.image_std", [float(v) for v in transform.std])
    for tensor_name, array in tensors.items():
        matrix = array.ndim >= 2 and tensor_name != "v.position_embd.weight"
        kind = GGMLQuantizationType.F16 if matrix else GGMLQuantizationType.F32
        writer.add_tensor(tensor_name, array.astype(np.float16 if matrix else np.float32), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
