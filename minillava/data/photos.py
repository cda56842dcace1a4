"""Real photos that installed Python packages ship, with captions and questions written for minillava.

scikit-image, scikit-learn and matplotlib each carry a few sample photos. They are too few to train on;
the demo asks about them to show how a trained model does on real pictures unlike its training data.
A photo whose package (or an optional data file of it) is missing is skipped with a logged reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from minillava.data.synth import SHORT_ANSWER_SUFFIX, Sample, qa_record

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("caption", "object", "color", "count", "yesno", "text")

CAPTION_PROMPT = "Describe the image briefly."

MAX_SIDE = 640  # larger photos are scaled down when written; the vision encoder takes far fewer pixels


@dataclass(frozen=True)
class Photo:
    name: str  # the image file's stem and the records' id prefix
    source: str  # a key of PHOTO_SOURCES
    key: str  # what that source loads, e.g. "astronaut" or "china.jpg"
    caption: str
    questions: tuple[tuple[str, str, str], ...]  # (kind, question, short reference answer)


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "astronaut",
          "A smiling astronaut in an orange spacesuit holds her helmet, with a flag and a model space shuttle "
          "behind her.",
          (("object", "What is this person's job?", "astronaut"),
           ("color", "What color is the spacesuit?", "orange"),
           ("object", "What is she holding?", "helmet"),
           ("yesno", "Is there a flag in the picture?", "yes"))),
    Photo("cameraman", "skimage", "camera",
          "A black-and-white photo of a man in a dark coat filming with a camera on a tripod in a field.",
          (("object", "What is the man looking through?", "camera"),
           ("object", "What does the camera stand on?", "tripod"),
           ("yesno", "Is this photo in color?", "no"))),
    Photo("cat", "skimage", "chelsea",
          "A close-up of a tabby cat with yellow-green eyes looking at the camera.",
          (("object", "What animal is this?", "cat"),
           ("count", "How many cats are there?", "1"),
           ("yesno", "Is the cat looking at the camera?", "yes"))),
    Photo("coffee", "skimage", "coffee",
          "A cup of coffee on a red saucer with a spoon, on a wooden table.",
          (("object", "What drink is in the cup?", "coffee"),
           ("color", "What color is the saucer?", "red"),
           ("object", "What lies on the saucer next to the cup?", "spoon"),
           ("object", "What is the table made of?", "wood"))),
    Photo("coins", "skimage", "coins",
          "Four rows of old coins laid out on a dark background, in black and white.",
          (("object", "What objects are shown?", "coins"),
           ("count", "How many rows of coins are there?", "4"),
           ("yesno", "Is this photo in color?", "no"))),
    Photo("rocket", "skimage", "rocket",
          "A white rocket stands on its launch pad at dusk, lit by floodlights between tall towers.",
          (("object", "What is standing on the launch pad?", "rocket"),
           ("color", "What color is the rocket?", "white"),
           ("yesno", "Is the sky dark?", "yes"))),
    Photo("motorcycle", "skimage", "stereo_motorcycle",
          "A red motorcycle parked in a garage, with shelves of boxes behind it.",
          (("object", "What vehicle is this?", "motorcycle"),
           ("color", "What color is the motorcycle?", "red"),
           ("count", "How many wheels does it have?", "2"),
           ("yesno", "Is it indoors?", "yes"))),
    Photo("horse", "skimage", "horse",
          "The black silhouette of a horse standing on a white background, facing right.",
          (("object", "What animal is this?", "horse"),
           ("color", "What color is the horse?", "black"),
           ("object", "Which way is the horse facing?", "right"))),
    Photo("galaxies", "skimage", "hubble_deep_field",
          "A deep-space photo of many small, distant galaxies on a black sky.",
          (("object", "What are the bright spots in this image?", "galaxies"),
           ("color", "What color is the background?", "black"))),
    Photo("page", "skimage", "page",
          "A photo of a printed page about region-based segmentation, with a line of code at the bottom.",
          (("text", "What is the title of the page?", "region-based segmentation"),
           ("yesno", "Is there text in the image?", "yes"))),
    Photo("bricks", "skimage", "brick",
          "A gray brick wall seen at an angle.",
          (("object", "What is the wall made of?", "brick"),
           ("yesno", "Is this photo in color?", "no"))),
    Photo("retina", "skimage", "retina",
          "A photo of the back of a human eye: blood vessels spread across an orange-red retina.",
          (("object", "What part of the body is shown?", "eye"),
           ("color", "What color is the background around the circle?", "black"))),
    Photo("china", "sklearn", "china.jpg",
          "A tall Chinese pagoda with curved roofs on a wooded hill above a lake.",
          (("object", "What kind of building is this?", "pagoda"),
           ("yesno", "Is there water in the picture?", "yes"),
           ("yesno", "Are there trees?", "yes"))),
    Photo("flower", "sklearn", "flower.jpg",
          "A close-up of an orange dahlia in front of dark green leaves.",
          (("object", "What is this?", "flower"),
           ("color", "What color is the flower?", "orange"),
           ("object", "What kind of flower is this?", "dahlia"))),
    Photo("grace_hopper", "matplotlib", "grace_hopper.jpg",
          "A portrait of an elderly woman in a navy uniform, cap and glasses, in front of an American flag.",
          (("object", "Is this person a man or a woman?", "woman"),
           ("yesno", "Is she wearing glasses?", "yes"),
           ("object", "What is behind her?", "flag"))),
)


def _from_skimage(key: str) -> Image.Image:
    import skimage.data

    pixels = getattr(skimage.data, key)()
    if isinstance(pixels, tuple):
        pixels = pixels[0]  # stereo_motorcycle returns (left, right, disparity)
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255  # horse is a mask: True = background
    return Image.fromarray(pixels)


def _from_sklearn(key: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(key))


def _from_matplotlib(key: str) -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data(key, asfileobj=False)) as image:
        image.load()
        return image


# Source name -> a function that loads one of its photos by key.
PHOTO_SOURCES: dict[str, Callable[[str], Image.Image]] = {
    "skimage": _from_skimage,
    "sklearn": _from_sklearn,
    "matplotlib": _from_matplotlib,
}

# What a missing package or data file raises: ImportError (also what skimage raises for a file that needs
# pooch), OSError (a file not found or unreadable), AttributeError (a function an older version lacks),
# ValueError (a name a version does not know).
_MISSING = (ImportError, OSError, AttributeError, ValueError)


def load_photo(photo: Photo) -> Image.Image:
    """The photo as a PIL image (RGB or grayscale), at most MAX_SIDE pixels on its longer side."""
    image = PHOTO_SOURCES[photo.source](photo.key)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def photo_samples(photo: Photo) -> list[Sample]:
    """The photo's caption and its questions, in the order written."""
    return [Sample("caption", CAPTION_PROMPT, photo.caption)] + [
        Sample(kind, question, answer) for kind, question, answer in photo.questions
    ]


def synthesize_photos(out_dir: str | Path, short_answer_suffix: bool = True) -> Path:
    """Write the photos to out_dir/images/ and their caption and questions to out_dir/photos.json.

    Returns the JSON path. Photos that cannot be loaded here are left out, each with a logged warning.
    `short_answer_suffix=False` leaves LLaVA-1.5's short-answer suffix off the questions.
    """
    suffix = SHORT_ANSWER_SUFFIX if short_answer_suffix else ""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for photo in PHOTOS:
        try:
            image = load_photo(photo)
        except _MISSING as err:
            log.warning("skipping photo %r (%s %r): %s", photo.name, photo.source, photo.key, err)
            continue
        image_path = f"images/{photo.name}.png"
        image.save(out_dir / image_path)
        for j, sample in enumerate(photo_samples(photo)):
            records.append(qa_record(f"photo-{photo.name}-{j}", image_path, sample, suffix))
    json_path = out_dir / "photos.json"
    json_path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return json_path
