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
from dataclasses import asdict, dataclass, replace
from itertools import permutations
from pathlib import Path

import numpy as np
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


# More phrasings per kind ("colour" and "color"), for training a model that is not tied to a few wordings, and
# others that no training drawing uses, for the shifted test set: the same questions, worded differently.
_VARIED_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": _COLOR_QUESTIONS + (
        "What colour is the {shape}?", "What is the colour of the {shape}?", "Which colour is the {shape}?",
        "What color does the {shape} have?", "Tell me the color of the {shape}.", "The {shape} is what color?",
        "Name the colour of the {shape}.", "What colour has the {shape}?", "In which color is the {shape} drawn?",
        "What is the {shape}'s color?"),
    "shape": _SHAPE_QUESTIONS + (
        "What shape is the {color} one?", "Which shape is the {color} object?", "Name the shape that is {color}.",
        "What is the {color} shape?", "The {color} object is which shape?", "What kind of shape is {color}?",
        "Which object is {color}?", "What {color} shape do you see?", "Tell me the shape of the {color} object.",
        "What is the {color} object?"),
    "count_all": _COUNT_ALL_QUESTIONS + (
        "How many objects are there?", "How many shapes do you see?", "What is the number of shapes?",
        "How many shapes does the image show?", "Count the objects in the image.", "How many items are shown?",
        "How many shapes can you count?", "Tell me how many shapes there are."),
    "count_type": _COUNT_TYPE_QUESTIONS + (
        "How many {shape}s do you see?", "Count the {shape}s.", "What is the number of {shape}s?",
        "How many {shape}s does the image show?", "How many {shape}s can you count?",
        "Tell me how many {shape}s there are.", "How many {shape}s are shown?", "Count the {shape}s in the image."),
    "pair": _PAIR_QUESTIONS + (
        "Is the {a} on the left or on the right of the {b}?", "Compared with the {b}, is the {a} left or right?",
        "Which side of the {b} is the {a} on, left or right?", "Is the {a} left of the {b} or right of it?",
        "Left or right: where is the {a} relative to the {b}?", "Does the {a} lie to the left or the right of the {b}?",
        "Is the {a} placed left or right of the {b}?"),
    "half": _HALF_QUESTIONS + (
        "Is the {a} on the left or the right?", "Which half of the image is the {a} in, left or right?",
        "Is the {a} in the left half or the right half?", "Left or right: where is the {a}?",
        "Does the {a} lie on the left or the right of the image?", "Which side is the {a} on, left or right?",
        "Is the {a} toward the left or the right?", "Is the {a} at the left or at the right?"),
    "yesno": _YESNO_QUESTIONS + (
        "Is {obj} present in the image?", "Do you see {obj}?", "Is {obj} shown?", "Does the picture have {obj}?",
        "Is {obj} in the picture?", "Can {obj} be seen?", "Is {obj} visible in the image?",
        "Does the image show {obj}?", "Is there {obj} here?"),
}
_SHIFTED_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What's the colour of the {shape}?", "Can you tell me what color the {shape} is?",
              "Identify the colour of the {shape}.", "Which color was used for the {shape}?"),
    "shape": ("Which shape has the color {color}?", "Identify the {color} shape.",
              "Can you tell me which shape is {color}?", "What's the {color} object's shape?"),
    "count_all": ("What's the total number of shapes?", "Can you count the shapes for me?",
                  "How many shapes appear here?"),
    "count_type": ("What's the number of {shape}s here?", "How many {shape}s appear here?",
                   "Can you count the {shape}s for me?"),
    "pair": ("Where is the {a} compared to the {b}, left or right?", "Is the {a} found left or right of the {b}?",
             "Looking at the {b}, is the {a} to its left or its right?"),
    "half": ("Where is the {a}, left half or right half?", "Is the {a} found on the left or the right side?",
             "Looking at the image, is the {a} left or right?"),
    "yesno": ("Is {obj} anywhere in the image?", "Would you say there is {obj}?", "Does {obj} appear here?",
              "Is {obj} among the shapes?"),
}
_PLAIN_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": _COLOR_QUESTIONS, "shape": _SHAPE_QUESTIONS, "count_all": _COUNT_ALL_QUESTIONS,
    "count_type": _COUNT_TYPE_QUESTIONS, "pair": _PAIR_QUESTIONS, "half": _HALF_QUESTIONS, "yesno": _YESNO_QUESTIONS,
}

# Backgrounds no training drawing uses, for the shifted test set.
SHIFTED_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "pale green": (210, 235, 210),
    "pink": (245, 215, 225),
    "sand": (225, 205, 160),
    "dark green": (25, 70, 45),
    "brown": (80, 50, 30),
}


@dataclass(frozen=True)
class Drawing:
    """How scenes are drawn and asked about: the pixels' variety and the questions' wordings."""

    name: str
    backgrounds: dict[str, tuple[int, int, int]]
    sizes: dict[str, tuple[float, float]]  # size name -> range of half a shape's side, as a fraction of the image
    questions: dict[str, tuple[str, ...]]
    jitter: int = 0  # each channel of a shape's colour and of the background moves by up to this much
    noise: float = 0.0  # standard deviation of per-pixel noise, in 0-255 units
    rotation: float = 0.0  # shapes turn by up to this many degrees either way
    antialias: bool = False  # drawn at 4x and scaled down: soft edges instead of hard steps
    window: float = 1.0  # the shapes lie in a random square of this fraction of the image's side


DRAWINGS: dict[str, Drawing] = {d.name: d for d in (
    # Exact colours, hard edges, a few wordings: what every earlier version drew; tests pin its pixels.
    Drawing("plain", BACKGROUNDS, SIZE_RANGES, _PLAIN_QUESTIONS),
    # The demo's training and held-out scenes: colours, sizes, turns, edges and wordings vary.
    Drawing("varied", BACKGROUNDS, SIZE_RANGES, _VARIED_QUESTIONS, jitter=16, noise=4.0, rotation=15.0,
            antialias=True),
    # Drawn differently from both: backgrounds, sizes in between, more turn and noise, crowded layouts, unseen
    # wordings. A model that learned the task and not the renderer answers these as well.
    Drawing("shifted", SHIFTED_BACKGROUNDS, {"medium": (0.085, 0.115)}, _SHIFTED_QUESTIONS, jitter=24, noise=8.0,
            rotation=30.0, antialias=True, window=0.8),
)}


@dataclass(frozen=True)
class PlacedShape:
    shape: str
    color: str
    size: str  # "small" | "large"
    x: int  # centre, pixels from the left
    y: int  # centre, pixels from the top
    radius: int  # half the side of the bounding box
    fill: tuple[int, int, int] | None = None  # the drawn colour; None: COLORS[color] exactly
    rotation: float = 0.0  # degrees, clockwise

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image_size: int
    background: str
    shapes: tuple[PlacedShape, ...]
    drawing: str = "plain"  # a DRAWINGS key
    noise_seed: int = 0


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


def _background_rgb(background: str) -> tuple[int, int, int]:
    return BACKGROUNDS.get(background) or SHIFTED_BACKGROUNDS[background]


def contrasts(color: str, background: str) -> bool:
    """True when a shape of this colour stands out clearly on this background."""
    return abs(_luminance(COLORS[color]) - _luminance(_background_rgb(background))) >= MIN_LUMINANCE_CONTRAST


def colors_for(background: str) -> list[str]:
    return [c for c in COLORS if contrasts(c, background)]


def _boxes_apart(a: PlacedShape, b: PlacedShape, gap: int) -> bool:
    return abs(a.x - b.x) >= a.radius + b.radius + gap or abs(a.y - b.y) >= a.radius + b.radius + gap


def place_shapes(
    rng: random.Random, specs: list[tuple[str, str, str, int]], image_size: int, tries: int = 200,
    window: float = 1.0
) -> tuple[PlacedShape, ...] | None:
    """(shape, color, size, radius) specs placed at random inside the image, boxes apart; None if they do not fit."""
    margin = max(1, image_size // 50)
    side = round(window * image_size)
    left, top = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
    placed: list[PlacedShape] = []
    for shape, color, size, radius in specs:
        lo, hi = margin + radius, side - 1 - margin - radius
        if lo > hi:
            return None
        for _ in range(tries):
            candidate = PlacedShape(shape, color, size, left + rng.randint(lo, hi), top + rng.randint(lo, hi), radius)
            if all(_boxes_apart(candidate, other, margin) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


def sample_scene(rng: random.Random, image_size: int, drawing: str = "plain") -> Scene:
    """Draw a background and 1-4 shapes that lie fully inside the image and do not touch."""
    style = DRAWINGS[drawing]
    for _ in range(1000):
        background = rng.choice(list(style.backgrounds))
        palette = colors_for(background)
        specs: list[tuple[str, str, str, int]] = []
        for _ in range(rng.randint(1, 4)):
            if specs and rng.random() < DUPLICATE_PROB:
                shape, color = rng.choice(specs)[:2]
            else:
                shape, color = rng.choice(SHAPES), rng.choice(palette)
            size = rng.choice(list(style.sizes))
            lo, hi = style.sizes[size]
            specs.append((shape, color, size, max(3, round(rng.uniform(lo, hi) * image_size))))
        shapes = place_shapes(rng, specs, image_size, window=style.window)
        if shapes is not None:
            if style.jitter or style.rotation:
                shapes = tuple(vary_look(s, rng, style) for s in shapes)
            return Scene(image_size, background, shapes, drawing, rng.randrange(2**31))
    raise RuntimeError(f"could not place shapes in a {image_size}px image; use a larger image_size")


def vary_look(s: PlacedShape, rng: random.Random, style: Drawing) -> PlacedShape:
    """The shape with its colour jittered and turned, as the drawing style allows."""
    fill = tuple(min(255, max(0, c + rng.randint(-style.jitter, style.jitter))) for c in COLORS[s.color])
    return replace(s, fill=fill, rotation=round(rng.uniform(-style.rotation, style.rotation), 1))


def _shape_points(s: PlacedShape, scale: float = 1.0) -> list[tuple[float, float]]:
    x, y, r = s.x * scale, s.y * scale, s.radius * scale
    if s.shape == "triangle":
        points = [(x, y - r), (x + r, y + r), (x - r, y + r)]
    elif s.shape == "diamond":
        points = [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    elif s.shape == "star":
        points = _star_points(x, y, r)
    elif s.shape == "square":
        points = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    else:
        raise ValueError(f"no polygon for shape {s.shape!r}")
    if not s.rotation:
        return points
    turn = math.radians(s.rotation)
    cos, sin = math.cos(turn), math.sin(turn)
    return [(x + (px - x) * cos - (py - y) * sin, y + (px - x) * sin + (py - y) * cos) for px, py in points]


def _star_points(x: float, y: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + k * math.pi / 5  # first point straight up
        points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
    return points


SUPERSAMPLE = 4  # an anti-aliased drawing is drawn at this scale and scaled down


def draw_scene(scene: Scene) -> Image.Image:
    style = DRAWINGS[scene.drawing]
    scale = SUPERSAMPLE if style.antialias else 1
    rng = random.Random(scene.noise_seed)
    background = _background_rgb(scene.background)
    if style.jitter:
        background = tuple(min(255, max(0, c + rng.randint(-style.jitter, style.jitter))) for c in background)
    image = Image.new("RGB", (scene.image_size * scale, scene.image_size * scale), background)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        fill = s.fill or COLORS[s.color]
        if s.shape == "circle":
            box = tuple(v * scale for v in (s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius))
            draw.ellipse(box, fill=fill)
        elif s.shape == "square" and not s.rotation:
            box = tuple(v * scale for v in (s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius))
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_shape_points(s, scale), fill=fill)
    if scale > 1:
        image = image.resize((scene.image_size, scene.image_size), Image.Resampling.BOX)
    if style.noise:
        pixels = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, style.noise, pixels.shape)
        image = Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))
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


def _asked(scene: Scene, kind: str) -> tuple[str, ...]:
    """The wordings of one kind of question in the scene's drawing."""
    return DRAWINGS[scene.drawing].questions[kind]


def _position_sample(scene: Scene, rng: random.Random) -> Sample | None:
    size = scene.image_size
    names = [s.name for s in scene.shapes]
    nameable = [s for s in scene.shapes if names.count(s.name) == 1]
    pairs = [(a, b) for a, b in permutations(nameable, 2) if abs(a.x - b.x) >= PAIR_MIN_DX * size]
    if pairs:
        a, b = rng.choice(pairs)
        question = rng.choice(_asked(scene, "pair")).format(a=a.name, b=b.name)
        return Sample("position", question, "left" if a.x < b.x else "right", reveals=frozenset({a.name, b.name}))
    off_center = [s for s in nameable if abs(s.x - size / 2) >= HALF_MIN_DX * size]
    if off_center:
        a = rng.choice(off_center)
        question = rng.choice(_asked(scene, "half")).format(a=a.name)
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
        Sample("yesno", rng.choice(_asked(scene, "yesno")).format(obj=_article(positive.name)), "yes",
               frozenset({positive.name, "yes/no"}), frozenset({positive.name, "yes/no"})),
        Sample("yesno", rng.choice(_asked(scene, "yesno")).format(obj=_article(f"{neg_color} {neg_shape}")), "no",
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
        samples.append(Sample("color", rng.choice(_asked(scene, "color")).format(shape=s.shape), s.color,
                              frozenset({s.name}), frozenset({s.name, f"shape {s.shape}"})))
    unique_colors = [s for s in scene.shapes if colors_seen.count(s.color) == 1]
    if unique_colors:
        s = rng.choice(unique_colors)
        samples.append(Sample("shape", rng.choice(_asked(scene, "shape")).format(color=s.color), s.shape,
                              frozenset({s.name}), frozenset({s.name, f"color {s.color}"})))

    if rng.random() < 0.5:
        samples.append(Sample("count", rng.choice(_asked(scene, "count_all")), str(len(scene.shapes))))
    else:
        absent_types = [t for t in SHAPES if t not in shapes_seen]
        # Mostly shapes that are there, sometimes one that is not (answer "0").
        asked = rng.choice(absent_types if rng.random() < 0.25 else sorted(set(shapes_seen)))
        question = rng.choice(_asked(scene, "count_type")).format(shape=asked)
        samples.append(Sample("count", question, str(shapes_seen.count(asked)), frozenset({f"shape {asked}"})))

    position = _position_sample(scene, rng)
    if position is not None:
        samples.append(position)
    samples.extend(_yesno_samples(scene, rng))
    samples.append(Sample("description", rng.choice(_DESCRIPTION_PROMPTS), description(scene)))
    return samples


QUESTIONS_PER_KIND = 4  # all_questions: at most this many questions of one kind about one image


def all_questions(scene: Scene, rng: random.Random, per_kind: int = QUESTIONS_PER_KIND) -> list[Sample]:
    """Every short-answer question one scene answers, up to `per_kind` of each kind, in a shuffled order.

    For independent turns (each question its own attention block over the image), where answers cannot give
    each other away: the colour of every shape that occurs once, the shape of every colour that occurs once, the
    total and per-shape counts (one shape that is absent: "0"), left/right of pairs and halves, and as many
    yes/no questions answered "no" as "yes".
    """
    size = scene.image_size
    shapes_seen = [s.shape for s in scene.shapes]
    colors_seen = [s.color for s in scene.shapes]

    def some(samples: list[Sample]) -> list[Sample]:
        rng.shuffle(samples)
        return samples[:per_kind]

    def ask(kind: str, wording: str, answer: str, **names: str) -> Sample:
        return Sample(kind, rng.choice(_asked(scene, wording)).format(**names), answer)

    colour = [ask("color", "color", s.color, shape=s.shape) for s in scene.shapes if shapes_seen.count(s.shape) == 1]
    shape = [ask("shape", "shape", s.shape, color=s.color) for s in scene.shapes if colors_seen.count(s.color) == 1]
    absent = [t for t in SHAPES if t not in shapes_seen]
    count = [ask("count", "count_all", str(len(scene.shapes)))] + some(
        [ask("count", "count_type", str(shapes_seen.count(t)), shape=t) for t in sorted(set(shapes_seen)) + absent[:1]])
    names = [s.name for s in scene.shapes]
    nameable = [s for s in scene.shapes if names.count(s.name) == 1]
    position = some(
        [ask("position", "pair", "left" if a.x < b.x else "right", a=a.name, b=b.name)
         for a, b in permutations(nameable, 2) if abs(a.x - b.x) >= PAIR_MIN_DX * size]
        + [ask("position", "half", "left" if a.x < size / 2 else "right", a=a.name)
           for a in nameable if abs(a.x - size / 2) >= HALF_MIN_DX * size])
    present = {(s.color, s.shape) for s in scene.shapes}
    missing = [(c, t) for c in colors_for(scene.background) for t in SHAPES if (c, t) not in present]
    hard = [(c, t) for c, t in missing if any(c == pc or t == pt for pc, pt in present)]
    yes = some([ask("yesno", "yesno", "yes", obj=_article(n)) for n in dict.fromkeys(names)])
    yes = yes[: per_kind // 2] or yes
    rng.shuffle(hard)
    rng.shuffle(missing)
    negatives = list(dict.fromkeys(hard[: len(yes)] + missing))[: len(yes)]
    no = [ask("yesno", "yesno", "no", obj=_article(f"{c} {t}")) for c, t in negatives]
    samples = some(colour) + some(shape) + count[:per_kind] + position + yes + no
    rng.shuffle(samples)
    return samples


PREFERENCE_KINDS = ("yesno", "caption", "color", "count")
HALLUCINATIONS = ("absent object", "wrong color", "wrong count")  # how a rejected caption departs from the scene


@dataclass(frozen=True)
class PreferencePair:
    kind: str  # a PREFERENCE_KINDS entry
    prompt: str
    chosen: str  # what the scene shows
    rejected: str  # a hallucination: an object that is not there, a wrong colour, a wrong count
    hallucination: str = ""  # for captions: which HALLUCINATIONS entry the rejected one has


def _hallucinated(scene: Scene, rng: random.Random) -> tuple[str, Scene] | None:
    """The scene with one departure from the truth, for a caption that names it; None if none applies."""
    colors = colors_for(scene.background)
    present = {(s.color, s.shape) for s in scene.shapes}
    options = []
    missing = [(c, t) for c in colors for t in SHAPES if (c, t) not in present]
    if missing and len(scene.shapes) < len(_NUMBER_WORDS):
        color, shape = rng.choice(missing)
        extra = replace(rng.choice(scene.shapes), color=color, shape=shape, x=scene.image_size, y=scene.image_size)
        options.append(("absent object", replace(scene, shapes=scene.shapes + (extra,))))
    k = rng.randrange(len(scene.shapes))
    others = [c for c in colors if c != scene.shapes[k].color]
    if others:
        shapes = list(scene.shapes)
        shapes[k] = replace(shapes[k], color=rng.choice(others))
        options.append(("wrong color", replace(scene, shapes=tuple(shapes))))
    if len(scene.shapes) < len(_NUMBER_WORDS):
        options.append(("wrong count", replace(scene, shapes=scene.shapes + (scene.shapes[k],))))
    options = [(kind, changed) for kind, changed in options if caption(changed) != caption(scene)]
    return rng.choice(options) if options else None


def preference_pairs(scene: Scene, rng: random.Random, suffix: str = "") -> list[PreferencePair]:
    """Preference pairs from a scene's ground truth, the faithful reply chosen over a hallucinated one.

    yes/no about objects (POPE's question): "yes" over "no" for each object asked about that is there, "no" over
    "yes" for as many that are not (half of them sharing a colour or a shape with one that is); the caption over a
    caption with one hallucination (an absent object added, a colour changed, a shape counted twice); a shape's
    colour over another colour; the number of shapes over one more or one less.
    """
    pairs = []
    yesno = [q for q in all_questions(scene, rng) if q.kind == "yesno"]
    for q in yesno:
        wrong = "no" if q.answer == "yes" else "yes"
        pairs.append(PreferencePair("yesno", q.question + suffix, q.answer, wrong))
    hallucinated = _hallucinated(scene, rng)
    if hallucinated is not None:
        kind, changed = hallucinated
        pairs.append(PreferencePair("caption", rng.choice(_CAPTION_PROMPTS), caption(scene), caption(changed), kind))
    shapes_seen = [s.shape for s in scene.shapes]
    unique = [s for s in scene.shapes if shapes_seen.count(s.shape) == 1]
    if unique:
        s = rng.choice(unique)
        wrong = [c for c in colors_for(scene.background) if c != s.color]
        question = rng.choice(_asked(scene, "color")).format(shape=s.shape)
        pairs.append(PreferencePair("color", question + suffix, s.color, rng.choice(wrong)))
    n = len(scene.shapes)
    wrong_count = rng.choice([m for m in (n - 1, n + 1) if m >= 1])
    pairs.append(PreferencePair("count", rng.choice(_asked(scene, "count_all")) + suffix, str(n), str(wrong_count)))
    return pairs


def preference_record(sample_id: str, image: str, pair: PreferencePair) -> dict:
    """One pair in minillava's preference layout (data format "preference")."""
    record = {"id": sample_id, "image": image, "prompt": f"<image>\n{pair.prompt}", "chosen": pair.chosen,
              "rejected": pair.rejected, "kind": pair.kind}
    return record | ({"hallucination": pair.hallucination} if pair.hallucination else {})


# LLaVA-1.5's convention for short-answer questions; evaluation asks with the same words.
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
FREE_FORM_KINDS = ("caption", "description")


def qa_record(sample_id: str, image: str, sample: Sample, suffix: str = SHORT_ANSWER_SUFFIX) -> dict:
    """One question as a LLaVA record; a short-answer question ends with `suffix` (LLaVA-1.5's by default)."""
    question = sample.question if sample.kind in FREE_FORM_KINDS else sample.question + suffix
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


def conversation_record(sample_id: str, image: str, samples: list[Sample], suffix: str = SHORT_ANSWER_SUFFIX
                        ) -> dict:
    """Several questions about one image as one multi-turn conversation (the image in the first turn), as in
    LLaVA's instruction data: the image's tokens are paid for once and every answer is supervised."""
    conversations = []
    for turn, sample in enumerate(samples):
        question = qa_record(sample_id, image, sample, suffix)["conversations"][0]["value"]
        if turn:
            question = question.removeprefix("<image>\n")
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": sample.answer}]
    return {"id": sample_id, "image": image, "conversations": conversations, "kind": "conversation"}


def write_splits(out_dir: Path, records: list[dict], conversations: list[dict],
                 write: Callable[[Path, list[dict]], None], every_question: list[dict]) -> None:
    """The training subsets every generator writes beside its full file: captions.json (stage 1),
    questions.json (one question per record), conversations.json (an image's questions as one leak-free
    conversation) and all-questions.json (every question an image answers, for independent turns)."""
    write(out_dir / "captions.json", [r for r in records if r["kind"] == "caption"])
    write(out_dir / "questions.json", [r for r in records if r["kind"] != "caption"])
    write(out_dir / "conversations.json", conversations)
    write(out_dir / "all-questions.json", every_question)


def synthesize_shapes(
    out_dir: str | Path, n: int, seed: int = 0, image_size: int = 224, show_progress: bool = False,
    drawing: str = "varied", short_answer_suffix: bool = True, preferences: bool = False,
) -> Path:
    """Write n images to out_dir/images/ and their questions to out_dir/shapes.json; returns the JSON path.

    out_dir/captions.json, questions.json and conversations.json are the training subsets (write_splits);
    out_dir/scenes.json keeps each image's metadata (background; per shape: shape, color, size, x, y,
    radius, drawn colour and rotation). `drawing` names a DRAWINGS entry: "varied" (the default), "plain" (exact
    colours, hard edges, three wordings per question) or "shifted" (a test set drawn and worded differently). The
    same seed gives byte-identical files. `short_answer_suffix=False` leaves LLaVA-1.5's "Answer the question using
    a single word or phrase." off the short-answer questions (11 of a question's ~26 tokens). `preferences` also
    writes out_dir/preferences.json: pairs of a faithful and a hallucinated reply (preference_pairs), for a dpo
    stage; drawn from a generator of their own, so the other files stay as they are without it.
    """
    suffix = SHORT_ANSWER_SUFFIX if short_answer_suffix else ""
    if drawing not in DRAWINGS:
        raise ValueError(f"unknown drawing {drawing!r}; known: {', '.join(DRAWINGS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size {image_size} is too small for legible shapes; use >= {MIN_IMAGE_SIZE}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    conversations: list[dict] = []
    every_question: list[dict] = []
    scenes: list[dict] = []
    pairs: list[dict] = []
    for index in tqdm(range(n), desc="synthesizing shapes", disable=not show_progress):
        # One generator per image, so image i is the same whatever n is.
        rng = random.Random(f"minillava-shapes:{seed}:{index}")
        scene = sample_scene(rng, image_size, drawing)
        image = f"images/{index:06d}.png"
        draw_scene(scene).save(out_dir / image)
        shapes = [asdict(s) for s in scene.shapes]
        scenes.append({"image": image, "background": scene.background, "drawing": drawing, "shapes": shapes})
        samples = make_samples(scene, rng)
        for j, sample in enumerate(samples):
            records.append(qa_record(f"{index:06d}-{j}", image, sample, suffix))
        # The short-answer questions, those an earlier one gives away left out, in a shuffled order within three
        # groups: a yes/no question first (either of the two, so the answers stay balanced), then colour and
        # shape (the questions a later turn most often gives away, and the hardest to learn), then the rest.
        # The long description stays a record of its own.
        turns = [s for s in samples if s.kind not in FREE_FORM_KINDS]
        rng.shuffle(turns)
        turns.sort(key=lambda s: _CONVERSATION_GROUPS.get(s.kind, 2))
        conversations.append(conversation_record(f"{index:06d}-c", image, leak_free_turns(turns), suffix))
        every_question.append(conversation_record(f"{index:06d}-a", image, all_questions(scene, rng), suffix))
        if preferences:
            pair_rng = random.Random(f"minillava-shapes-preferences:{seed}:{index}")
            pairs += [preference_record(f"{index:06d}-p{j}", image, pair)
                      for j, pair in enumerate(preference_pairs(scene, pair_rng, suffix))]
    (out_dir / "scenes.json").write_text(json.dumps(scenes, indent=1) + "\n", encoding="utf-8")
    json_path = out_dir / "shapes.json"
    json_path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    if preferences:
        (out_dir / "preferences.json").write_text(json.dumps(pairs, indent=1) + "\n", encoding="utf-8")
    write_splits(out_dir, records, conversations,
                 lambda path, data: path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"),
                 every_question)
    return json_path
