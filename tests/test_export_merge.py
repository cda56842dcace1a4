"""`minillava merge`: a training checkpoint with LoRA adapters -> a model folder with the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from minillava.cli import main
from minillava.data.conversation import Conversation, Turn
from minillava.export.merge import MergeError, find_checkpoint, load_model
from minillava.model import MiniLlava
from minillava.train.checkpoint import save_checkpoint
from minillava.train.config import DataSource, ModelSpec, StageConfig, TrainConfig, Tuning
from minillava.train.tuning import apply_tuning, trainable_state


def stage_checkpoint(run, tiny_towers, tiny_llms, images, lm_mode="lora"):
    """A two-stage run whose second stage has a checkpoint (LoRA factors made non-zero, as after training)."""
    stages = [StageConfig(name="align", data=[DataSource("x.json")]),
              StageConfig(name="instruct", data=[DataSource("x.json")],
                          language_model=Tuning(mode=lm_mode, lora_r=4, lora_alpha=8, lora_targets="all-linear"))]
    config = TrainConfig(output_dir=str(run), model=ModelSpec(vision=tiny_towers["clip"], llm=tiny_llms["llama"]),
                         stages=stages)
    MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"], seed=5).save_pretrained(run / "align" / "final")
    model = MiniLlava.from_pretrained(run / "align" / "final")
    apply_tuning(model, stages[1])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    meta = {"stage": "instruct", "step": 3, "total_steps": 3, "config": config.to_dict()}
    folder = save_checkpoint(run / "instruct", 3, trainable_state(model), {}, meta)
    return model.eval(), folder


def logits(model: MiniLlava, images) -> torch.Tensor:
    conversation = Conversation([Turn("user", "<image>\nWhat colour?"), Turn("assistant", "Red.")], images[:1])
    batch = model.prepare([conversation])
    with torch.no_grad():
        return model(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values, return_logits=True).logits


@pytest.mark.parametrize("lm_mode", ["lora"])
def test_merged_model_equals_the_unmerged_peft_model(tiny_towers, tiny_llms, images, tmp_path, lm_mode):
    run = tmp_path / "run"
    peft_model, folder = stage_checkpoint(run, tiny_towers, tiny_llms, images, lm_mode)
    reference = logits(peft_model, images)
    assert main(["merge", "--model", str(run / "instruct"), "--out", str(tmp_path / "merged")]) == 0  # newest
    merged = MiniLlava.from_pretrained(tmp_path / "merged")
    assert merged.config.stored == ["projector", "language_model"]
    assert not any("lora" in name for name in merged.state_dict())  # plain LM weights
    torch.testing.assert_close(logits(merged, images), reference, atol=1e-5, rtol=1e-5)
    base = MiniLlava.from_pretrained(run / "align" / "final")
    assert not torch.allclose(logits(base, images), reference, atol=1e-3)  # the adapters did change the outputs
    torch.testing.assert_close(logits(load_model(folder), images), reference, atol=1e-5, rtol=1e-5)


def test_model_folders_and_missing_starts_are_explained(tiny_towers, tiny_llms, images, tmp_path):
    run = tmp_path / "run"
    _, folder = stage_checkpoint(run, tiny_towers, tiny_llms, images)
    with pytest.raises(MergeError, match="merged already"):
        find_checkpoint(run / "align" / "final")
    with pytest.raises(MergeError, match="neither a complete checkpoint"):
        find_checkpoint(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["stage"] = "gone"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MergeError, match="stage 'gone' is not in"):
        load_model(folder)
