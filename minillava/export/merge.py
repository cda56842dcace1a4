"""Fold a training checkpoint's LoRA adapters into the language model: checkpoint folder -> model folder.

A stage's `final/` model folder is merged already (training folds LoRA in when a stage ends). Checkpoints
(`RUN/<stage>/checkpoints/step-*/`) are not: they hold the stage's trainable tensors only, LoRA factors among
them, named as peft wraps the LM. Merging rebuilds the stage's starting model (its init_from, the previous
stage's final/, or the recipe's new model), loads those tensors and adds `scale * B @ A` to each wrapped weight.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from minillava.model import MiniLlava
from minillava.model.config import CONFIG_NAME
from minillava.model.llava import COMPONENTS
from minillava.train.checkpoint import COMPLETE, META, WEIGHTS, latest_checkpoint
from minillava.train.config import ModelSpec

log = logging.getLogger(__name__)

# peft's name for a LoRA factor of the language model, with its single "default" adapter.
_LORA_KEY = re.compile(r"language_model\.base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.default\.weight")
_PEFT_PREFIX = "language_model.base_model.model."


class MergeError(ValueError):
    """A checkpoint that cannot be merged; the message names the folder and the reason."""


def find_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint folder: `path` itself, or the newest one of a stage folder (RUN/<stage>)."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    if (path / CONFIG_NAME).is_file() and not (path / META).is_file():
        raise MergeError(f"{path} is a model folder: its weights are merged already (training folds LoRA in at the "
                         "end of each stage); pass a checkpoint folder (RUN/<stage>/checkpoints/step-*)")
    latest = latest_checkpoint(path)
    if latest is None:
        raise MergeError(f"{path}: neither a complete checkpoint folder nor a stage folder with checkpoints")
    return latest


def merge_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> MiniLlava:
    """The model of a training checkpoint with its LoRA adapters folded into the language model."""
    folder = find_checkpoint(path)
    meta = json.loads((folder / META).read_text())
    config, stage_name = meta["config"], meta["stage"]
    names = [stage["name"] for stage in config["stages"]]
    if stage_name not in names:
        raise MergeError(f"{folder}: stage {stage_name!r} is not in the checkpoint's recipe {names}")
    index = names.index(stage_name)
    stage = config["stages"][index]
    model = _starting_model(folder, config, index, dtype)
    weights = load_file(str(folder / WEIGHTS))
    lm_tuning = stage["language_model"]
    scale = lm_tuning["lora_alpha"] / lm_tuning["lora_r"] if lm_tuning["mode"] == "lora" else None
    _apply(model, weights, scale, folder)
    stored = set(model.config.stored) | {name for name in COMPONENTS if stage[name]["mode"] != "frozen"}
    model.config.stored = [name for name in COMPONENTS if name in stored]
    log.info("merged %s (stage %s, step %s)", folder, stage_name, meta.get("step"))
    return model


def merge_to_folder(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """`merge_checkpoint` saved as a model folder at `out`."""
    model = merge_checkpoint(path, dtype)
    model.save_pretrained(out)
    return Path(out)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> MiniLlava:
    """A model folder, or a checkpoint (or stage) folder merged on the fly."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return MiniLlava.from_pretrained(path, dtype=dtype)
    return merge_checkpoint(path, dtype)


def _starting_model(folder: Path, config: dict, index: int, dtype: torch.dtype) -> MiniLlava:
    """What the stage started from, as minillava.train builds it."""
    stage = config["stages"][index]
    if stage.get("init_from"):
        return MiniLlava.from_pretrained(stage["init_from"], dtype=dtype)
    if index > 0:
        run_dir = folder.parents[2]  # RUN/<stage>/checkpoints/step-N
        previous = run_dir / config["stages"][index - 1]["name"] / "final"
        if not (previous / CONFIG_NAME).is_file():
            raise MergeError(f"{folder}: the stage starts from {previous}, which is missing")
        return MiniLlava.from_pretrained(previous, dtype=dtype)
    spec = ModelSpec(**{"position_channels": 0, "color_cells": 0, **config["model"]})  # runs before the options
    seed = config["seed"] + index  # the seed training gave the new projector
    return MiniLlava.from_components(spec.vision, spec.llm, spec.projector, seed=seed, dtype=dtype,
                                     **spec.options())


@torch.no_grad()
def _apply(model: MiniLlava, weights: dict[str, torch.Tensor], scale: float | None, folder: Path) -> None:
    params = dict(model.named_parameters())
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        if match := _LORA_KEY.fullmatch(key):
            if scale is None:
                raise MergeError(f"{folder}: LoRA tensor {key} but the stage does not train the LM with LoRA")
            factors.setdefault(match["module"], {})[match["factor"]] = tensor
            continue
        name = "language_model." + key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        if name not in params:
            raise MergeError(f"{folder}: tensor {key} has no parameter in the model")
        params[name].copy_(tensor)
    for module, pair in factors.items():
        target = f"language_model.{module}.weight"
        if set(pair) != {"A", "B"} or target not in params:
            raise MergeError(f"{folder}: LoRA factors of {module} are incomplete or fit no weight")
        weight = params[target]
        delta = pair["B"].float() @ pair["A"].float() * scale
        weight.copy_((weight.float() + delta).to(weight.dtype))
