"""Demo presets: how much data, how many steps, how many held-out questions."""

from __future__ import annotations

from dataclasses import dataclass

from minillava.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: tuple[str, ...]  # dotted overrides of recipes/default.yaml
    eval_per_kind: int  # held-out questions per question kind and data set, for the last stage's model
    shapes_test_images: int
    fashion_test_images: int
    shown: int = 4  # held-out images shown with both stages' answers
    photo_questions: int | None = None  # None: every question about the real photos
    # Earlier stages' models (stage 1 answers with captions: slow to generate) get this many per kind, and no
    # shifted set: they are shown beside the last, not held to the targets.
    early_eval_per_kind: int = 30


PRESETS: Registry[Preset] = Registry("demo preset")

for _preset in (
    Preset("quick", "a few minutes on 2 CPU cores: the pipeline end to end, little learning", (
        "stages.align.data.0.synth.n=80", "stages.align.data.1.synth.n=100",
        "stages.align.batch_size=8", "stages.align.max_steps=8", "stages.align.eval_every=0",
        "stages.align.save_every=4",
        # Stage 2 trains the whole LM on every question of an image at once: 26 s a step of 8 on 2 cores, so the
        # quick preset takes 6 steps of the recipe's 4 (about 80 s instead of 315 s).
        "stages.instruct.batch_size=4", "stages.instruct.max_steps=6", "stages.instruct.eval_every=0",
        "stages.instruct.save_every=0",  # end only: stage 2 checkpoints hold the whole language model
    ), eval_per_kind=4, shapes_test_images=12, fashion_test_images=10, shown=2, photo_questions=8,
       early_eval_per_kind=4),
    Preset("full", "the default: within 15 minutes on 2 CPU cores, the targets of the README", (),
           eval_per_kind=100, shapes_test_images=300, fashion_test_images=120),
    Preset("long", "2.5x the scenes and about 3x the training steps of full (stage 1 450, stage 2 390)", (
        "stages.align.data.0.synth.n=2000", "stages.align.max_steps=450", "stages.align.save_every=150",
        "stages.instruct.max_steps=390", "stages.instruct.eval_every=130", "stages.instruct.save_every=130",
    ), eval_per_kind=100, shapes_test_images=300, fashion_test_images=120),
):
    PRESETS.register(_preset.name)(_preset)
