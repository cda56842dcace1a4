"""Moving shapes: short videos of a shape moving over a plain background while another may appear, with
questions that no single frame answers (which way the shape moves, what appears), in LLaVA's video format.

The first frame cannot tell a direction, and a late frame cannot tell which of two shapes was there from the
start: a model answers only by comparing frames. Every answer follows from the clip's metadata, so tests and
recipes get exact ground truth without downloaded data.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from minillava.data import synth
from minillava.data.synth import BACKGROUNDS, SHAPES, SHORT_ANSWER_SUFFIX, PlacedShape, Scene, colors_for, draw_scene
from minillava.data.video import write_video

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
NOTHING = "nothing"  # the answer to "what appears" when nothing does
MIN_CLIP_SIZE = 32
TRAVEL = 0.45  # how far the shape moves over the clip, as a fraction of the image's side
RADIUS = (0.07, 0.11)  # half a shape's side, as a fraction of the image's side
APPEAR_PROB = 0.5

_DIRECTION_QUESTIONS = (
    "Which way does the {name} move?",
    "In which direction is the {name} moving?",
    "Does the {name} move left, right, up or down?",
)
_APPEAR_QUESTIONS = (
    "What appears during the video?",
    "Which shape shows up partway through the video?",
    "What new object appears in the video?",
)
_CAPTION_PROMPTS = ("Describe the video briefly.", "What happens in the video?")


@dataclass(frozen=True)
class Clip:
    image_size: int  # frames are square, this side (even: H.264 in 4:2:0 needs even sides)
    frames: int
    background: str
    mover: PlacedShape  # where it is in the first frame
    direction: str  # a DIRECTIONS key
    travel: int  # pixels it moves from the first frame to the last
    newcomer: PlacedShape | None  # appears at frame `appear_at` and stays still
    appear_at: int

    def scene(self, t: int) -> Scene:
        """Frame t's scene."""
        dx, dy = DIRECTIONS[self.direction]
        step = round(self.travel * t / max(1, self.frames - 1))
        shapes = [replace(self.mover, x=self.mover.x + dx * step, y=self.mover.y + dy * step)]
        if self.newcomer is not None and t >= self.appear_at:
            shapes.append(self.newcomer)
        return Scene(self.image_size, self.background, tuple(shapes))

    def draw(self) -> list[Image.Image]:
        return [draw_scene(self.scene(t)) for t in range(self.frames)]

    @property
    def appears(self) -> str:
        return NOTHING if self.newcomer is None else self.newcomer.name

    def caption(self) -> str:
        text = f"{synth._article(self.mover.name).capitalize()} moves {self.direction}."
        return text + (f" {synth._article(self.newcomer.name).capitalize()} appears." if self.newcomer else "")


def sample_clip(rng: random.Random, image_size: int, frames: int) -> Clip:
    """A mover whose whole path lies inside the frame and, half the time, a newcomer clear of that path."""
    if image_size < MIN_CLIP_SIZE or image_size % 2:
        raise ValueError(f"image_size {image_size}: use an even size of at least {MIN_CLIP_SIZE}")
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to show motion, not {frames}")
    background = rng.choice(list(BACKGROUNDS))
    palette = colors_for(background)
    margin = max(1, image_size // 50)
    travel = round(TRAVEL * image_size)
    radius = max(3, round(rng.uniform(*RADIUS) * image_size))
    direction = rng.choice(list(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    low, high = margin + radius, image_size - 1 - margin - radius
    x = rng.randint(low + travel * (dx < 0), high - travel * (dx > 0))
    y = rng.randint(low + travel * (dy < 0), high - travel * (dy > 0))
    mover = PlacedShape(rng.choice(SHAPES), rng.choice(palette), "large", x, y, radius)
    newcomer = None
    if rng.random() < APPEAR_PROB:
        path = (min(x, x + dx * travel) - radius, min(y, y + dy * travel) - radius,
                max(x, x + dx * travel) + radius, max(y, y + dy * travel) + radius)
        for _ in range(200):
            r = max(3, round(rng.uniform(*RADIUS) * image_size))
            cx, cy = (rng.randint(margin + r, image_size - 1 - margin - r) for _ in range(2))
            clear = cx + r + margin < path[0] or cx - r - margin > path[2] or cy + r + margin < path[1] or \
                cy - r - margin > path[3]
            kind = (rng.choice(SHAPES), rng.choice(palette))
            if clear and kind != (mover.shape, mover.color):
                newcomer = PlacedShape(*kind, "large", cx, cy, r)
                break
    return Clip(image_size, frames, background, mover, direction, travel, newcomer,
                appear_at=rng.randint(frames // 3, max(frames // 3, 2 * frames // 3)))


def clip_questions(clip: Clip, rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, question, answer) for the clip: its direction and what appears."""
    return [("direction", rng.choice(_DIRECTION_QUESTIONS).format(name=clip.mover.name), clip.direction),
            ("appears", rng.choice(_APPEAR_QUESTIONS), clip.appears)]


def _record(sample_id: str, video: str, kind: str, question: str, answer: str, suffix: str) -> dict:
    prompt = question if kind == "caption" else question + suffix
    return {"id": sample_id, "video": video, "kind": kind, "answer": answer,
            "conversations": [{"from": "human", "value": f"<video>\n{prompt}"}, {"from": "gpt", "value": answer}]}


def synthesize_motion(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 64, frames: int = 16,
                      fps: int = 8, as_frames: bool = False, short_answer_suffix: bool = True,
                      show_progress: bool = False) -> Path:
    """Write n clips to out_dir/videos/ (MP4, or with `as_frames` a folder of PNG frames each) and their records:
    motion.json (every record), captions.json (stage 1), questions.json (direction and appears questions) and
    clips.json (each clip's metadata). The same seed gives the same clips; returns motion.json's path."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    suffix = SHORT_ANSWER_SUFFIX if short_answer_suffix else ""
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    clips: list[dict] = []
    for index in tqdm(range(n), desc="synthesizing moving shapes", disable=not show_progress):
        rng = random.Random(f"minillava-motion:{seed}:{index}")  # clip i is the same whatever n is
        clip = sample_clip(rng, image_size, frames)
        video = f"videos/{index:06d}" + ("" if as_frames else ".mp4")
        pictures = clip.draw()
        if as_frames:
            (out_dir / video).mkdir(exist_ok=True)
            for t, picture in enumerate(pictures):
                picture.save(out_dir / video / f"{t:04d}.png")
        else:
            write_video(out_dir / video, pictures, fps=fps)
        clips.append({"video": video, **asdict(clip)})
        records.append(_record(f"{index:06d}-caption", video, "caption", rng.choice(_CAPTION_PROMPTS),
                               clip.caption(), suffix))
        records += [_record(f"{index:06d}-{kind}", video, kind, question, answer, suffix)
                    for kind, question, answer in clip_questions(clip, rng)]
    write = lambda name, data: (out_dir / name).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")  # noqa: E731
    write("clips.json", clips)
    write("captions.json", [r for r in records if r["kind"] == "caption"])
    write("questions.json", [r for r in records if r["kind"] != "caption"])
    write("motion.json", records)
    return out_dir / "motion.json"
