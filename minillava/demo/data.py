"""The demo's data: the recipe's training files (generated on first use) and the held-out evaluation sets."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from minillava.data.fashion import FASHION_DIR, fashion_available, synthesize_fashion
from minillava.data.photos import synthesize_photos
from minillava.data.synth import SHORT_ANSWER_SUFFIX, synthesize_shapes
from minillava.demo.presets import Preset
from minillava.eval.data import load_samples
from minillava.train.config import TrainConfig, load_recipe

log = logging.getLogger(__name__)
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "default.yaml"
RECIPE_ROOT = "runs/demo"  # the recipe's own paths start here; the demo moves them under its output folder
FASHION_HINT = (f"Fashion-MNIST is not installed ({FASHION_DIR} is missing): the demo runs on shapes alone. "
                f"To add it: sudo apt-get install dataset-fashion-mnist (or run `make setup` as root).")

# Which evaluation task scores each kind of held-out question.
SHAPES_KINDS = {"color": "vqa", "shape": "vqa", "count": "vqa", "position": "vqa", "yesno": "pope"}
EVAL_KINDS = {
    "shapes": SHAPES_KINDS,
    "shapes-shifted": SHAPES_KINDS,  # the same questions on scenes drawn and worded differently (synth "shifted")
    "fashion": {"item": "vqa", "category": "vqa", "yesno": "pope"},
}
# Fashion's item questions name the category in some variants ("What kind of shoe is this?"); evaluation asks
# the one question that gives nothing away.
FASHION_ITEM_QUESTION = "What item is this?"
# The demo's questions come without LLaVA-1.5's "Answer the question using a single word or phrase." (11 of a
# question's ~26 tokens): its recipe's synth entries say short_answer_suffix: false, and so are the held-out sets
# and the photos' questions.
SHORT_ANSWER_SUFFIX_IN_DEMO = False
# Evaluation asks the questions the same way (the vqa and pope tasks would otherwise append the suffix).
DEMO_SUFFIX = SHORT_ANSWER_SUFFIX if SHORT_ANSWER_SUFFIX_IN_DEMO else ""


@dataclass
class EvalSet:
    name: str
    by_task: dict[str, list[dict]] = field(default_factory=dict)  # task -> samples

    @property
    def size(self) -> int:
        return sum(len(s) for s in self.by_task.values())

    def first(self, per_kind: int, quotas: dict[str, int] | None = None) -> EvalSet:
        """The first `per_kind` samples of each question kind (`quotas`: other counts for some kinds)."""
        return EvalSet(self.name, _per_kind([s for v in self.by_task.values() for s in v],
                                            EVAL_KINDS[self.name], per_kind, quotas))


def early_sets(preset: Preset, sets: list[EvalSet]) -> list[EvalSet]:
    """What the models of earlier stages are asked: fewer questions per kind, and not the shifted set."""
    return [s.first(preset.early_eval_per_kind) for s in sets if s.name != "shapes-shifted"]


def demo_recipe(preset: Preset, out: Path, with_fashion: bool) -> TrainConfig:
    """recipes/default.yaml with the preset's overrides, its paths under `out`, and fashion left out if absent."""
    if not RECIPE.is_file():
        raise FileNotFoundError(f"{RECIPE}: the demo recipe is missing (run the demo from a minillava checkout)")
    config = load_recipe(RECIPE, [f"output_dir={out / 'train'}", *preset.overrides])
    sources = [source for stage in config.stages for source in stage.data + stage.val_data]
    for source in sources:
        if source.path.startswith(RECIPE_ROOT + "/"):
            source.path = str(out / source.path[len(RECIPE_ROOT) + 1 :])
    if not with_fashion:  # every file in a folder the fashion generator writes
        folders = {Path(s.path).parent for s in sources if (s.synth or {}).get("kind") == "fashion"}
        for stage in config.stages:
            stage.data = [s for s in stage.data if Path(s.path).parent not in folders]
    return config


def _per_kind(samples: list[dict], kinds: dict[str, str], quota: int,
              quotas: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """The first `quota` samples of each kind (`quotas[kind]` where given), grouped by the task that scores them."""
    taken: dict[str, int] = defaultdict(int)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        kind = sample.get("kind")
        if kind in kinds and taken[kind] < (quotas or {}).get(kind, quota):
            taken[kind] += 1
            by_task[kinds[kind]].append(sample)
    return dict(by_task)


def held_out_sets(preset: Preset, data: Path, with_fashion: bool) -> list[EvalSet]:
    """Test images never seen in training (other seeds; Fashion-MNIST's test split), as evaluation samples, and
    the shifted shapes set: scenes drawn and questions worded in ways training never shows."""
    sets = []
    for name, folder, seed, drawing in (("shapes", "shapes-test", 2, "varied"),
                                        ("shapes-shifted", "shapes-shifted", 3, "shifted")):
        shapes_dir = data / folder
        if not (shapes_dir / "questions.json").exists():
            synthesize_shapes(shapes_dir, n=preset.shapes_test_images, seed=seed, image_size=224,
                              show_progress=True, drawing=drawing, short_answer_suffix=SHORT_ANSWER_SUFFIX_IN_DEMO)
        sets.append(EvalSet(name, _per_kind(load_samples(shapes_dir / "questions.json"), EVAL_KINDS[name],
                                            preset.eval_per_kind)))
    if with_fashion:
        fashion_dir = data / "fashion-test"
        if not (fashion_dir / "questions.json").exists():
            synthesize_fashion(fashion_dir, split="test", n=preset.fashion_test_images, seed=0, show_progress=True,
                               short_answer_suffix=SHORT_ANSWER_SUFFIX_IN_DEMO)
        samples = load_samples(fashion_dir / "questions.json")
        for sample in samples:
            if sample.get("kind") == "item":
                sample["question"] = FASHION_ITEM_QUESTION + DEMO_SUFFIX
        sets.append(EvalSet("fashion", _per_kind(samples, EVAL_KINDS["fashion"], preset.eval_per_kind)))
    return sets


def photo_questions(data: Path) -> list[dict]:
    """The packaged real photos with this project's questions: shown, not scored against targets."""
    photos_dir = data / "photos"
    if not (photos_dir / "photos.json").exists():
        synthesize_photos(photos_dir, short_answer_suffix=SHORT_ANSWER_SUFFIX_IN_DEMO)
    return [s for s in load_samples(photos_dir / "photos.json") if s.get("kind") != "caption"]


def fashion_ready() -> bool:
    if fashion_available():
        return True
    log.warning(FASHION_HINT)
    return False
