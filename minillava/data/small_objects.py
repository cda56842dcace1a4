"""Small objects on a large canvas: shape questions that one downscaled view cannot answer and AnyRes tiles can.

Each scene is a canvas (256 px by default) with 1 to `max_objects` small shapes of distinct colours, 10-16 px
across. Resized to a 64 px tower's single view they become 2.5-4 px blobs: the colour survives (it says where to
look), the shape does not. AnyRes tiles see the canvas at full resolution, where the outline is plain. The
questions ask for the shape of the object of a named colour, so the answer set is closed (SHAPES) and every
answer follows from the scene. The train and held-out splits are drawn from separate seeds into separate images.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from minillava.data.synth import (
    DRAWINGS,
    SHORT_ANSWER_SUFFIX,
    Sample,
    Scene,
    colors_for,
    draw_scene,
    place_shapes,
    qa_record,
    vary_look,
)

# Shapes whose outlines differ at 10-16 px; the closed answer set of every question.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Half an object's box side as a fraction of the canvas: 5-8 px at 256 px, 1.3-2 px once resized to 64 px. The
# range is wide so that an object's area (what a blob still shows) does not tell its shape.
RADIUS_RANGE: tuple[float, float] = (0.02, 0.031)
MIN_CANVAS = 128  # below this the objects are a few pixels even at full resolution
DRAWING = "varied"  # synth's jittered colours, turns, soft edges and noise
SPLITS: dict[str, str] = {"train": "train.json", "held-out": "held-out.json"}

_QUESTIONS = (
    "What shape is the {color} object?",
    "What is the shape of the {color} object?",
    "Which shape is {color}?",
    "What shape is the small {color} object?",
)


def sample_small_scene(rng: random.Random, image_size: int, max_objects: int = 3) -> Scene:
    """A background and 1-max_objects small shapes of distinct colours that do not touch."""
    style = DRAWINGS[DRAWING]
    lo, hi = RADIUS_RANGE
    for _ in range(1000):
        background = rng.choice(list(style.backgrounds))
        palette = colors_for(background)
        colors = rng.sample(palette, min(len(palette), rng.randint(1, max_objects)))
        specs = [(rng.choice(SHAPES), color, "small", round(rng.uniform(lo, hi) * image_size)) for color in colors]
        shapes = place_shapes(rng, specs, image_size, window=style.window)
        if shapes is not None:
            shapes = tuple(vary_look(s, rng, style) for s in shapes)
            return Scene(image_size, background, shapes, DRAWING, rng.randrange(2**31))
    raise RuntimeError(f"could not place small objects on a {image_size}px canvas")


def shape_questions(scene: Scene, rng: random.Random) -> list[Sample]:
    """One question per object: its shape, named by its colour (colours are distinct within a scene)."""
    return [Sample("shape", rng.choice(_QUESTIONS).format(color=s.color), s.shape) for s in scene.shapes]


def _write_json(path: Path, data: list[dict]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def synthesize_small_objects(
    out_dir: str | Path, n: int = 1000, n_held_out: int = 200, seed: int = 0, image_size: int = 256,
    max_objects: int = 3, show_progress: bool = False, short_answer_suffix: bool = True,
) -> Path:
    """Write the train and held-out splits into out_dir; returns the path of train.json.

    out_dir/train.json and held-out.json hold one LLaVA record per question (with `kind` and `answer`, so the
    held-out file is also `vqa` evaluation data); images go to out_dir/images/{split}-{index}.png and each
    image's metadata to out_dir/scenes.json. The same arguments give byte-identical files, and image i of a split
    is the same whatever n is.
    """
    if image_size < MIN_CANVAS:
        raise ValueError(f"image_size {image_size}: the canvas must be at least {MIN_CANVAS} px")
    if n < 0 or n_held_out < 0 or max_objects < 1:
        raise ValueError(f"n ({n}) and n_held_out ({n_held_out}) must be >= 0, max_objects ({max_objects}) >= 1")
    suffix = SHORT_ANSWER_SUFFIX if short_answer_suffix else ""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    scenes: list[dict] = []
    for split, count in (("train", n), ("held-out", n_held_out)):
        records: list[dict] = []
        for index in tqdm(range(count), desc=f"small objects ({split})", disable=not show_progress):
            rng = random.Random(f"minillava-small-objects:{seed}:{split}:{index}")
            scene = sample_small_scene(rng, image_size, max_objects)
            image = f"images/{split}-{index:06d}.png"
            draw_scene(scene).save(out_dir / image)
            scenes.append({"image": image, "split": split, "background": scene.background,
                           "shapes": [asdict(s) for s in scene.shapes]})
            records += [qa_record(f"{split}-{index:06d}-{j}", image, sample, suffix)
                        for j, sample in enumerate(shape_questions(scene, rng))]
        _write_json(out_dir / SPLITS[split], records)
    _write_json(out_dir / "scenes.json", scenes)
    return out_dir / SPLITS["train"]
