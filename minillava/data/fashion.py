"""Fashion-MNIST in LLaVA format: real 28x28 product images with captions and questions from their labels.

The images come from Debian's `dataset-fashion-mnist` package (gzipped IDX files). Every answer follows
from the image's class label, so the test split gives exact ground truth for evaluation.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from minillava.data.synth import (
    SHORT_ANSWER_SUFFIX,
    Sample,
    conversation_record,
    leak_free_turns,
    qa_record,
    write_splits,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Split name -> the prefix of its files in FASHION_DIR.
SPLITS: dict[str, str] = {"train": "train", "test": "t10k"}

NATIVE_SIZE = 28

KINDS: tuple[str, ...] = ("caption", "item", "category", "yesno")


@dataclass(frozen=True)
class FashionClass:
    name: str  # the short answer to "what item is this?"
    phrase: str  # the name with its article, for captions and yes/no questions
    category: str  # "clothing" | "footwear" | "bag"


# In label order. Answers are what a VQA-normalised exact match compares: lowercase, no article, and a
# hyphen that normalises to a space on both sides ("T-shirt" and "t-shirt" both become "t shirt").
CLASSES: tuple[FashionClass, ...] = (
    FashionClass("t-shirt", "a t-shirt", "clothing"),
    FashionClass("trousers", "a pair of trousers", "clothing"),
    FashionClass("pullover", "a pullover", "clothing"),
    FashionClass("dress", "a dress", "clothing"),
    FashionClass("coat", "a coat", "clothing"),
    FashionClass("sandal", "a sandal", "footwear"),
    FashionClass("shirt", "a shirt", "clothing"),
    FashionClass("sneaker", "a sneaker", "footwear"),
    FashionClass("bag", "a bag", "bag"),
    FashionClass("ankle boot", "an ankle boot", "footwear"),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CATEGORIES: tuple[str, ...] = ("clothing", "footwear", "bag")

_CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption for the image.",
    "Summarize the image in one sentence.",
    "What is shown in the image?",
)
_ITEM_QUESTIONS = (
    "What item is this?",
    "What is this item?",
    "What fashion item is shown in the image?",
    "Name the item in the image.",
    "What kind of item is this?",
)
# Asked only where they fit the item, besides the general ones above.
_ITEM_QUESTIONS_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    "clothing": ("What item of clothing is this?", "What piece of clothing is shown?"),
    "footwear": ("What kind of shoe is this?", "What type of footwear is this?"),
    "bag": (),
}
_CATEGORY_QUESTIONS = (
    "Is this clothing, footwear or a bag?",
    "Is this item clothing, footwear or a bag?",
    "Which category does this item belong to: clothing, footwear or bag?",
)
_YESNO_QUESTIONS = (
    "Is this {phrase}?",
    "Does the image show {phrase}?",
    "Is the item in the image {phrase}?",
)

# IDX type code -> element type (big-endian, as the format stores it).
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
    """A file that is not a valid (optionally gzipped) IDX file."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-byte-order array of the shape its header gives.

    IdxError names the file and what is wrong: bad gzip data, a bad magic number, a truncated header, or a
    data size that does not match the dimensions.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise IdxError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected 0000, a type code "
            f"in {sorted(_IDX_DTYPES)} and a dimension count >= 1)"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path}: truncated header ({len(raw)} bytes; {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxError(
            f"{path}: {len(raw) - header} bytes of data, but dimensions {dims} of {dtype.itemsize}-byte "
            f"elements need {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def fashion_files(split: str, root: str | Path = FASHION_DIR) -> tuple[Path, Path]:
    """The (images, labels) IDX files of a split."""
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; known: {', '.join(SPLITS)}")
    root = Path(root)
    prefix = SPLITS[split]
    return root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"


def fashion_available(root: str | Path = FASHION_DIR) -> bool:
    """True when all four Fashion-MNIST files are in `root`."""
    return all(path.is_file() for split in SPLITS for path in fashion_files(split, root))


def require_fashion(root: str | Path = FASHION_DIR) -> None:
    """FileNotFoundError naming the missing files and how to install them, unless all are there."""
    missing = [path.name for split in SPLITS for path in fashion_files(split, root) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {root} lacks {', '.join(missing)}. Install Debian's package as root "
            "(`apt-get install dataset-fashion-mnist`, or `make setup` as root), or pass the folder that holds "
            "the *-ubyte.gz files"
        )


def load_fashion(split: str = "train", root: str | Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The images (N x 28 x 28 uint8, light item on a dark background) and labels (N,) of a split."""
    images_path, labels_path = fashion_files(split, root)
    require_fashion(root)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE) or images.dtype != np.uint8:
        raise IdxError(f"{images_path}: expected N x 28 x 28 bytes, got {images.shape} of {images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxError(f"{labels_path}: expected a 1-dimensional byte array, got {labels.shape} of {labels.dtype}")
    if len(images) != len(labels):
        raise IdxError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASSES):
        raise IdxError(f"{labels_path}: label {labels.max()} is out of range 0..{len(CLASSES) - 1}")
    return images, labels


def balanced_subset(labels: np.ndarray, n: int, seed: int, split: str) -> np.ndarray:
    """Sorted indices of n images, as many of each class as possible (the counts differ by at most one).

    Each class's images are taken in one seeded order, so a larger n keeps every image of a smaller one.
    """
    if not 0 <= n <= len(labels):
        raise ValueError(f"n must be within 0..{len(labels)} for the {split} split, got {n}")
    extra_order = list(range(len(CLASSES)))
    random.Random(f"minillava-fashion:{seed}:{split}:extra").shuffle(extra_order)
    chosen: list[int] = []
    for rank, label in enumerate(extra_order):
        count = n // len(CLASSES) + (rank < n % len(CLASSES))
        members = np.flatnonzero(labels == label).tolist()
        if count > len(members):
            raise ValueError(f"the {split} split has {len(members)} {CLASS_NAMES[label]} images; {count} asked")
        random.Random(f"minillava-fashion:{seed}:{split}:class{label}").shuffle(members)
        chosen.extend(members[:count])
    return np.array(sorted(chosen), dtype=np.int64)


def caption(label: int) -> str:
    """E.g. "A photo of an ankle boot."."""
    return f"A photo of {CLASSES[label].phrase}."


def make_samples(label: int, rng: random.Random) -> list[Sample]:
    """A caption, the item, its category and two yes/no questions (one yes, one no) about one image."""
    item = CLASSES[label]
    # The facts a conversation must not have told before a turn (leak_free_turns): the item gives every answer
    # away, the category the "no" about an item of another category.
    told_item, told_category = frozenset({"item"}), frozenset({"category"})
    samples = [
        Sample("caption", rng.choice(_CAPTION_PROMPTS), caption(label)),
        Sample("item", rng.choice(_ITEM_QUESTIONS + _ITEM_QUESTIONS_BY_CATEGORY[item.category]), item.name,
               told_item, told_item),
        Sample("category", rng.choice(_CATEGORY_QUESTIONS), item.category, told_item, told_category),
    ]
    other = CLASSES[rng.choice([k for k in range(len(CLASSES)) if k != label])]
    pair = frozenset({"yes/no"})  # one of each per image: either answer gives the other away
    yesno = [
        Sample("yesno", rng.choice(_YESNO_QUESTIONS).format(phrase=item.phrase), "yes",
               told_item | pair, told_item | pair),
        Sample("yesno", rng.choice(_YESNO_QUESTIONS).format(phrase=other.phrase), "no",
               told_item | pair | (told_category if other.category != item.category else frozenset()), pair),
    ]
    rng.shuffle(yesno)  # one of each per image: the yes-ratio is exactly 0.5
    return samples + yesno


def all_questions(label: int, rng: random.Random) -> list[Sample]:
    """Every question one image answers, for independent turns (data.synth.all_questions): the item in two
    phrasings, the category, and two yes/no questions of each answer (the other items one of the same category,
    where there is one, and one of another)."""
    item = CLASSES[label]
    phrasings = list(_ITEM_QUESTIONS + _ITEM_QUESTIONS_BY_CATEGORY[item.category])
    rng.shuffle(phrasings)
    same = [k for k, c in enumerate(CLASSES) if k != label and c.category == item.category]
    other = [k for k, c in enumerate(CLASSES) if c.category != item.category]
    negatives = [rng.choice(same or other), rng.choice(other)]
    yes_questions = rng.sample(_YESNO_QUESTIONS, 2)
    samples = [Sample("item", q, item.name) for q in phrasings[:2]]
    samples.append(Sample("category", rng.choice(_CATEGORY_QUESTIONS), item.category))
    samples += [Sample("yesno", q.format(phrase=item.phrase), "yes") for q in yes_questions]
    samples += [Sample("yesno", rng.choice(_YESNO_QUESTIONS).format(phrase=CLASSES[k].phrase), "no")
                for k in negatives]
    rng.shuffle(samples)
    return samples


def synthesize_fashion(
    out_dir: str | Path,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    root: str | Path = FASHION_DIR,
    show_progress: bool = False,
    short_answer_suffix: bool = True,
) -> Path:
    """Write a split's images to out_dir/images/ and their questions to out_dir/fashion.json; returns its path.

    n=None takes the whole split (60000 train, 10000 test images); an int takes a class-balanced subset.
    Images are saved as grayscale PNGs at `image_size` (default 28, the native size: the vision encoder
    resizes anyway, and it keeps writing 10k images to a couple of seconds). Image files and ids carry the
    split and the index in the source file ("images/test-000042.png", "test-000042-1"), so the splits never
    share an id. out_dir/captions.json, questions.json, conversations.json and all-questions.json are the
    training subsets;
    out_dir/labels.json keeps each image's index, label and class. The same seed gives identical files, and an
    image's questions do not depend on n. `short_answer_suffix=False` leaves LLaVA-1.5's short-answer suffix off
    the questions.
    """
    suffix = SHORT_ANSWER_SUFFIX if short_answer_suffix else ""
    if image_size < NATIVE_SIZE:
        raise ValueError(f"image_size must be >= {NATIVE_SIZE} (the native size), got {image_size}")
    images, labels = load_fashion(split, root)
    indices = np.arange(len(labels)) if n is None else balanced_subset(labels, n, seed, split)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    conversations: list[dict] = []
    every_question: list[dict] = []
    items: list[dict] = []
    for index in tqdm(indices.tolist(), desc=f"writing fashion-mnist {split}", disable=not show_progress):
        label = int(labels[index])
        name = f"{split}-{index:06d}"
        image_path = f"images/{name}.png"
        picture = Image.fromarray(images[index])
        if image_size != NATIVE_SIZE:
            picture = picture.resize((image_size, image_size), Image.Resampling.BICUBIC)
        picture.save(out_dir / image_path)
        items.append({"image": image_path, "index": index, "label": label, "class": CLASS_NAMES[label]})
        # One generator per image, so an image's questions are the same whatever n is.
        rng = random.Random(f"minillava-fashion:{seed}:{split}:{index}")
        samples = make_samples(label, rng)
        for j, sample in enumerate(samples):
            records.append(qa_record(f"{name}-{j}", image_path, sample, suffix))
        turns = [s for s in samples if s.kind != "caption"]
        rng.shuffle(turns)
        conversations.append(conversation_record(f"{name}-c", image_path, leak_free_turns(turns), suffix))
        every_question.append(conversation_record(f"{name}-a", image_path, all_questions(label, rng), suffix))
    _write_json(out_dir / "labels.json", items)
    json_path = out_dir / "fashion.json"
    _write_json(json_path, records)
    write_splits(out_dir, records, conversations, _write_json, every_question)
    return json_path


def _write_json(path: Path, data: list[dict]) -> None:
    """A JSON list with one record per line: readable, and written by json's C encoder (indent= is pure Python
    and 5x slower on the full split)."""
    lines = ",\n".join(json.dumps(item, ensure_ascii=False) for item in data)
    path.write_text(f"[\n{lines}\n]\n" if data else "[]\n", encoding="utf-8")
