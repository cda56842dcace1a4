"""Demo presets: how much data, how many steps, how many held-out questions."""

from __future__ import annotations

from dataclasses import dataclass

from minillava.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: tuple[str, ...]  # dotted overrides of recipes/default.yaml
    eval_per_kind: int  # held-out questions per question kind and data set
    shapes_test_images: int
    fashion_test_images: int
    shown: int = 4  # held-out images shown with both stages' answers


PRESETS: Registry[Preset] = Registry("demo preset")

for _preset in (
    Preset("quick", "a few minutes on 2 CPU cores: the pipeline end to end, little learning", (
        "stages.align.data.0.synth.n=160", "stages.align.data.1.synth.n=200",
        "stages.align.batch_size=8", "stages.align.max_steps=16", "stages.align.eval_every=0",
        "stages.align.save_every=8",
        "stages.instruct.batch_size=8", "stages.instruct.max_steps=24", "stages.instruct.eval_every=0",
        "stages.instruct.save_every=8",
    ), eval_per_kind=6, shapes_test_images=24, fashion_test_images=20, shown=3),
    Preset("full", "the default: about ten minutes on 2 CPU cores, the targets of the README", (),
           eval_per_kind=40, shapes_test_images=120, fashion_test_images=80),
):
    PRESETS.register(_preset.name)(_preset)
