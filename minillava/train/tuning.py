"""Per-component tuning of a stage: frozen, full or LoRA, each with its own learning rate."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from minillava.model import MiniLlava
from minillava.model.llava import COMPONENTS
from minillava.train.config import LORA_TARGETS, StageConfig, Tuning


def apply_tuning(model: MiniLlava, stage: StageConfig) -> None:
    """Freeze or unfreeze each component and wrap the LM in LoRA if asked (`param_groups` then lists what trains)."""
    model.requires_grad_(False)
    model.vision.freeze(stage.vision.mode == "frozen")
    if stage.projector.mode == "full":
        model.projector.requires_grad_(True)
    lm_tuning = stage.language_model
    if lm_tuning.mode == "full":
        model.language_model.requires_grad_(True)
    elif lm_tuning.mode == "lora":
        model.language_model = get_peft_model(model.language_model, lora_config(lm_tuning))


def param_groups(model: MiniLlava, stage: StageConfig) -> list[dict]:
    """AdamW parameter groups of the trainable tensors, one per component; build them after sharding, which
    replaces every parameter."""
    groups = []
    for name in COMPONENTS:
        tuning: Tuning = getattr(stage, name)
        params = [p for p in getattr(model, name).parameters() if p.requires_grad]
        if tuning.mode != "frozen" and not params:
            raise ValueError(f"stage {stage.name!r}: {name} is set to {tuning.mode} but has no parameters to train")
        if params:
            groups.append({"name": name, "params": params, "lr": tuning.lr or stage.lr,
                           "weight_decay": stage.weight_decay})
    if not groups:
        raise ValueError(f"stage {stage.name!r}: every component is frozen; nothing would train")
    return groups


def cast_frozen_language_model(model: MiniLlava, dtype: torch.dtype) -> None:
    """Store the language model's frozen weights in the autocast dtype: they are cast to it on every use
    anyway, and casting ~all weights on every step costs more than the matrix products of a small model.
    Trainable tensors (LoRA, a fully tuned LM) keep fp32 master weights."""
    for param in model.language_model.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)


def lora_config(tuning: Tuning) -> LoraConfig:
    targets = LORA_TARGETS[tuning.lora_targets] if isinstance(tuning.lora_targets, str) else tuning.lora_targets
    return LoraConfig(r=tuning.lora_r, lora_alpha=tuning.lora_alpha, lora_dropout=tuning.lora_dropout,
                      target_modules=targets, bias="none")


def trainable_state(model: MiniLlava) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def finalize(model: MiniLlava, stage: StageConfig) -> MiniLlava:
    """Fold LoRA into the LM and record which components now differ from their pretrained source."""
    model.float()  # weights kept in bf16 for speed go back to fp32, so a LoRA delta is added in full precision
    if stage.language_model.mode == "lora":
        model.language_model = model.language_model.merge_and_unload()
    stored = set(model.config.stored)
    for name in COMPONENTS:
        if getattr(stage, name).mode != "frozen":
            stored.add(name)
    model.config.stored = [name for name in COMPONENTS if name in stored]
    return model
