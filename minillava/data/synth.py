"""Procedural shapes data set in LLaVA format: images with known contents and questions about them.

Each image holds 1-4 non-overlapping coloured shapes on a plain background. Every question's answer
follows from the scene's metadata, so tests and training demos get exact ground truth without any
downloaded data.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import permutations
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

KINDS: tuple[str, ...] = ("caption", "color", "shape", "count", "position", "yesno", "description")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 205, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (215, 215, 215),
    "cream": (245, 235, 205),
    "light blue": (205, 225, 245),
    "dark gray": (55, 55, 55),
    "navy": (25, 30, 70),
}

# Half the side of a shape's bounding box, as a fraction of the image size; the gap keeps sizes distinct.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.05, 0.08), "large": (0.12, 0.16)}

MIN_IMAGE_SIZE = 32
MIN_LUMINANCE_CONTRAST = 60.0  # yellow on white (55) is too faint; green on dark gray (69) is clear
PAIR_MIN_DX = 0.15  # left/right questions only for pairs this far apart (fraction of the image)
HALF_MIN_DX = 0.10  # "which half" questions only for shapes this far from the middle
DUPLICATE_PROB = 0.15  # chance a shape repeats an earlier colour+shape, so counts like "two squares" occur

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

_CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption for the image.",
    "Summarize the image in one sentence.",
    "What is shown in the image?",
)
_DESCRIPTION_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "Describe every shape in the image and where it is.",
)
_COLOR_QUESTIONS = (
    "What color is the {shape}?",
    "What is the color of the {shape}?",
    "Which color is the {shape}?",
)
_SHAPE_QUESTIONS = (
    "What shape is the {color} object?",
    "What is the shape of the {color} object?",
    "Which shape is {color}?",
)
_COUNT_ALL_QUESTIONS = (
    "How many shapes are there?",
    "How many shapes are in the image?",
    "Count the shapes.",
)
_COUNT_TYPE_QUESTIONS = ("How many {shape}s are there?", "How many {shape}s are in the image?")
_PAIR_QUESTIONS = (
    "Is the {a} to the left or right of the {b}?",
    "Is the {a} left or right of the {b}?",
    "Relative to the {b}, is the {a} on the left or the right?",
)
_HALF_QUESTIONS = (
    "Is the {a} in the left or right half of the image?",
    "Is the {a} on the left side or the right side of the image?",
)
_YESNO_QUESTIONS = (
    "Is there {obj} in the image?",
    "Does the image contain {obj}?",
    "Can you see {obj} in the image?",
)


@dataclass(frozen=True)
class PlacedShape:
    shape: str
    color: str
    size: str  # "small" | "large"
    x: int  # centre, pixels from the left
    y: int  # centre, pixels from the top
    radius: int  # half the side of the bounding box

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image_size: int
    background: str
    shapes: tuple[PlacedShape, ...]


@dataclass(frozen=True)
class Sample:
    kind: str
    question: str
    answer: str
    # For multi-turn conversations (leak_free_turns): the facts an earlier turn must not have told, since they
    # give this answer away, and the facts this turn tells. Facts are object names ("red circle"), for the
    # questions about a shape or colour that occurs once "shape circle" / "color red", and "yes/no" for the
    # image's pair of yes/no questions.
    depends: frozenset[str] = frozenset()
    reveals: frozenset[str] = frozenset()


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def contrasts(color: str, background: str) -> bool:
    """True when a shape of this colour stands out clearly on this background."""
    return abs(_luminance(COLORS[color]) - _luminance(BACKGROUNDS[background])) >= MIN_LUMINANCE_CONTRAST


def colors_for(background: str) -> list[str]:
    return [c for c in COLORS if contrasts(c, background)]


def _boxes_apart(a: PlacedShape, b: PlacedShape, gap: int) -> bool:
    return abs(a.x - b.x) >= a.radius + b.radius + gap or abs(a.y - b.y) >= a.radius + b.radius + gap


def _try_place(
    rng: random.Random, specs: list[tuple[str, str, str, int]], image_size: int, tries: int = 200
) -> tuple[PlacedShape, ...] | None:
    margin = max(1, image_size // 50)
    placed: list[PlacedShape] = []
    for shape, color, size, radius in specs:
        lo, hi = margin + radius, image_size - 1 - margin - radius
        for _ in range(tries):
            candidate = PlacedShape(shape, color, size, rng.randint(lo, hi), rng.randint(lo, hi), radius)
            if all(_boxes_apart(candidate, other, margin) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


def sample_scene(rng: random.Random, image_size: int) -> Scene:
    """Draw a background and 1-4 shapes that lie fully inside the image and do not touch."""
    for _ in range(1000):
        background = rng.choice(list(BACKGROUNDS))
        palette = colors_for(background)
        specs: list[tuple[str, str, str, int]] = []
        for _ in range(rng.randint(1, 4)):
            if specs and rng.random() < DUPLICATE_PROB:
                shape, color = rng.choice(specs)[:2]
            else:
                shape, color = rng.choice(SHAPES), rng.choice(palette)
            size = rng.choice(("small", "large"))
            lo, hi = SIZE_RANGES[size]
            specs.append((shape, color, size, max(3, round(rng.uniform(lo, hi) * image_size))))
        shapes = _try_place(rng, specs, image_size)
        if shapes is not None:
            return Scene(image_size, background, shapes)
    raise RuntimeError(f"could not place shapes in a {image_size}px image; use a larger image_size")


def _shape_points(s: PlacedShape) -> list[tuple[float, float]]:
    x, y, r = s.x, s.y, s.radius
    if s.shape == "triangle":
        return [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if s.shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    if s.shape == "star":
        return _star_points(x, y, r)
    raise ValueError(f"no polygon for shape {s.shape!r}")


def _star_points(x: int, y: int, r: int) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + k * math.pi / 5  # first point straight up
        points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
    return points


def draw_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        fill = COLORS[s.color]
        box = (s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius)
        if s.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif s.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_shape_points(s), fill=fill)
    return image


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _reading_order(scene: Scene) -> list[PlacedShape]:
    """Top band to bottom band, left to right within a band: the fixed order of captions and descriptions."""
    return sorted(scene.shapes, key=lambda s: (3 * s.y // scene.image_size, s.x, s.y))


def position_phrase(s: PlacedShape, image_size: int) -> str:
    """Where a shape lies by thirds of the image, e.g. "in the top left", "on the right", "in the center"."""
    horizontal = ("left", "center", "right")[min(2, 3 * s.x // image_size)]
    vertical = ("top", "middle", "bottom")[min(2, 3 * s.y // image_size)]
    if vertical == "middle":
        return "in the center" if horizontal == "center" else f"on the {horizontal}"
    if horizontal == "center":
        return f"at the {vertical}"
    return f"in the {vertical} {horizontal}"


def caption(scene: Scene) -> str:
    """One sentence naming every shape and colour, e.g. "A red circle and two blue squares."."""
    counts: dict[tuple[str, str], int] = {}
    for s in _reading_order(scene):
        counts[(s.color, s.shape)] = counts.get((s.color, s.shape), 0) + 1
    parts = [
        _article(f"{color} {shape}") if n == 1 else f"{_NUMBER_WORDS[n]} {color} {shape}s"
        for (color, shape), n in counts.items()
    ]
    text = _join(parts)
    return text[0].upper() + text[1:] + "."


def description(scene: Scene) -> str:
    n = len(scene.shapes)
    items = [
        f"{_article(s.size)} {s.name} {position_phrase(s, scene.image_size)}" for s in _reading_order(scene)
    ]
    noun = "shape" if n == 1 else "shapes"
    background = _article(scene.background)
    return f"The image shows {_NUMBER_WORDS[n]} {noun} on {background} background: {_join(items)}."


def _position_sample(scene: Scene, rng: random.Random) -> Sample | None:
    size = scene.image_size
    names = [s.name for s in scene.shapes]
    nameable = [s for s in scene.shapes if names.count(s.name) == 1]
    pairs = [(a, b) for a, b in permutations(nameable, 2) if abs(a.x - b.x) >= PAIR_MIN_DX * size]
    if pairs:
        a, b = rng.choice(pairs)
        question = rng.choice(_PAIR_QUESTIONS).format(a=a.name, b=b.name)
        return Sample("position", question, "left" if a.x < b.x else "right", reveals=frozenset({a.name, b.name}))
    off_center = [s for s in nameable if abs(s.x - size / 2) >= HALF_MIN_DX * size]
    if off_center:
        a = rng.choice(off_center)
        question = rng.choice(_HALF_QUESTIONS).format(a=a.name)
        return Sample("position", question, "left" if a.x < size / 2 else "right", reveals=frozenset({a.name}))
    return None


def _yesno_samples(scene: Scene, rng: random.Random) -> list[Sample]:
    """One question whose answer is yes and one whose answer is no, so the data set is balanced exactly."""
    present = {(s.color, s.shape) for s in scene.shapes}
    positive = rng.choice(scene.shapes)
    absent = [(c, s) for c in colors_for(scene.background) for s in SHAPES if (c, s) not in present]
    # Hard negatives share a colour or a shape with something in the image, so colour alone does not answer.
    hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    neg_color, neg_shape = rng.choice(hard if hard and rng.random() < 0.5 else absent)
    # Each image has one of each, so either answer gives the other away ("yes/no" below); no red star follows
    # from "the star is blue" or "the red object is a circle".
    samples = [
        Sample("yesno", rng.choice(_YESNO_QUESTIONS).format(obj=_article(positive.name)), "yes",
               frozenset({positive.name, "yes/no"}), frozenset({positive.name, "yes/no"})),
        Sample("yesno", rng.choice(_YESNO_QUESTIONS).format(obj=_article(f"{neg_color} {neg_shape}")), "no",
               frozenset({f"shape {neg_shape}", f"color {neg_color}", "yes/no"}), frozenset({"yes/no"})),
    ]
    rng.shuffle(samples)
    return samples


def make_samples(scene: Scene, rng: random.Random) -> list[Sample]:
    """All questions asked about one scene; kinds whose answer would be ambiguous are left out."""
    shapes_seen = [s.shape for s in scene.shapes]
    colors_seen = [s.color for s in scene.shapes]
    cap = caption(scene)
    samples = [Sample("caption", rng.choice(_CAPTION_PROMPTS), cap)]

    unique_shapes = [s for s in scene.shapes if shapes_seen.count(s.shape) == 1]
    if unique_shapes:
        s = rng.choice(unique_shapes)
        samples.append(Sample("color", rng.choice(_COLOR_QUESTIONS).format(shape=s.shape), s.color,
                              frozenset({s.name}), frozenset({s.name, f"shape {s.shape}"})))
    unique_colors = [s for s in scene.shapes if colors_seen.count(s.color) == 1]
    if unique_colors:
        s = rng.choice(unique_colors)
        samples.append(Sample("shape", rng.choice(_SHAPE_QUESTIONS).format(color=s.color), s.shape,
                              frozenset({s.name}), frozenset({s.name, f"color {s.color}"})))

    if rng.random() < 0.5:
        samples.append(Sample("count", rng.choice(_COUNT_ALL_QUESTIONS), str(len(scene.shapes))))
    else:
        absent_types = [t for t in SHAPES if t not in shapes_seen]
        # Mostly shapes that are there, sometimes one that is not (answer "0").
        asked = rng.choice(absent_types if rng.random() < 0.25 else sorted(set(shapes_seen)))
        question = rng.choice(_COUNT_TYPE_QUESTIONS).format(shape=asked)
        samples.append(Sample("count", question, str(shapes_seen.count(asked)), frozenset({f"shape {asked}"})))

    position = _position_sample(scene, rng)
    if position is not None:
        samples.append(position)
    samples.extend(_yesno_samples(scene, rng))
    samples.append(Sample("description", rng.choice(_DESCRIPTION_PROMPTS), description(scene)))
    return samples


# LLaVA-1.5's convention for short-answer questions; evaluation asks with the same words.
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
FREE_FORM_KINDS = ("caption", "description")


def qa_record(sample_id: str, image: str, sample: Sample) -> dict:
    question = sample.question if sample.kind in FREE_FORM_KINDS else sample.question + SHORT_ANSWER_SUFFIX
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": sample.answer},
        ],
        "kind": sample.kind,
        "answer": sample.answer,
    }


_CONVERSATION_GROUPS = {"yesno": 0, "color": 1, "shape": 1}


def leak_free_turns(samples: list[Sample]) -> list[Sample]:
    """The samples, in order, whose answers no earlier one gives away.

    Evaluation asks one question at a time. A conversation in which "What shape is the red object?" - "circle"
    comes before "What color is the circle?" lets the second answer be read off the text instead of the image:
    in shuffled conversations of every question, two thirds of the colour and shape answers were, and the model
    learns to copy. Turns left out here stay in questions.json.
    """
    told: set[str] = set()
    kept = []
    for sample in samples:
        if not sample.depends & told:
            kept.append(sample)
            told |= sample.reveals
    return kept


def conversation_record(sample_id: str, image: str, samples: list[Sample]) -> dict:
    """Several questions about one image as one multi-turn conversation (the image in the first turn), as in
    LLaVA's instruction data: the image's tokens are paid for once and every answer is supervised."""
    conversations = []
    for turn, sample in enumerate(samples):
        question = qa_record(sample_id, image, sample)["conversations"][0]["value"]
        if turn:
            question = question.removeprefix("<image>\n")
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": sample.answer}]
    return {"id": sample_id, "image": image, "conversations": conversations, "kind": "conversation"}


def write_splits(out_dir: Path, records: list[dict], conversations: list[dict],
                 write: Callable[[Path, list[dict]], None]) -> None:
    """The training subsets every generator writes beside its full file: captions.json (stage 1),
    questions.json (one question per record) and conversations.json (all of an image's questions in one)."""
    write(out_dir / "captions.json", [r for r in records if r["kind"] == "caption"])
    write(out_dir / "questions.json", [r for r in records if r["kind"] != "caption"])
    write(out_dir / "conversations.json", conversations)


def synthesize_shapes(
    out_dir: str | Path, n: int, seed: int = 0, image_size: int = 224, show_progress: bool = False
) -> Path:
    """Write n images to out_dir/images/ and their questions to out_dir/shapes.json; returns the JSON path.

    out_dir/captions.json, questions.json and conversations.json are the training subsets (write_splits);
    out_dir/scenes.json keeps each image's metadata (background; per shape: shape, color, size, x, y,
    radius). The same seed gives byte-identical files.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size {image_size} is too small for legible shapes; use >= {MIN_IMAGE_SIZE}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    conversations: list[dict] = []
    scenes: list[dict] = []
    for index in tqdm(range(n), desc="synthesizing shapes", disable=not show_progress):
        # One generator per image, so image i is the same whatever n is.
        rng = random.Random(f"minillava-shapes:{seed}:{index}")
        scene = sample_scene(rng, image_size)
        image = f"images/{index:06d}.png"
        draw_scene(scene).save(out_dir / image)
        shapes = [asdict(s) for s in scene.shapes]
        scenes.append({"image": image, "background": scene.background, "shapes": shapes})
        samples = make_samples(scene, rng)
        for j, sample in enumerate(samples):
            records.append(qa_record(f"{index:06d}-{j}", image, sample))
        # The short-answer questions, those an earlier one gives away left out, in a shuffled order within three
        # groups: a yes/no question first (either of the two, so the answers stay balanced), then colour and
        # shape (the questions a later turn most often gives away, and the hardest to learn), then the rest.
        # The long description stays a record of its own.
        turns = [s for s in samples if s.kind not in FREE_FORM_KINDS]
        rng.shuffle(turns)
        turns.sort(key=lambda s: _CONVERSATION_GROUPS.get(s.kind, 2))
        conversations.append(conversation_record(f"{index:06d}-c", image, leak_free_turns(turns)))
    (out_dir / "scenes.json").write_text(json.dumps(scenes, indent=1) + "\n", encoding="utf-8")
    json_path = out_dir / "shapes.json"
    json_path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    write_splits(out_dir, records, conversations,
                 lambda path, data: path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))
    return json_path
