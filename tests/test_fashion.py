"""Fashion-MNIST: IDX parsing, and LLaVA records whose answers match the labels of Debian's real files."""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minillava.cli import main
from minillava.data.fashion import (
    CATEGORIES,
    CLASS_NAMES,
    CLASSES,
    KINDS,
    IdxError,
    caption,
    fashion_available,
    fashion_files,
    read_idx,
    synthesize_fashion,
)
from minillava.data.synth import SHORT_ANSWER_SUFFIX
from minillava.data.validate import check_file

needs_fashion = pytest.mark.skipif(
    not fashion_available(), reason="Debian's dataset-fashion-mnist is not installed (apt-get install as root)"
)


def _idx(code: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


# ---- IDX parsing on hand-written files ----

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_bytes_and_shape(tmp_path: Path, compress: bool) -> None:
    raw = _idx(0x08, (2, 3), bytes([0, 1, 2, 253, 254, 255]))
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    array = read_idx(path)
    assert array.dtype == np.uint8 and array.shape == (2, 3)
    np.testing.assert_array_equal(array, [[0, 1, 2], [253, 254, 255]])


def test_read_idx_big_endian_types_come_back_native(tmp_path: Path) -> None:
    path = tmp_path / "b.idx"
    path.write_bytes(_idx(0x0B, (3,), struct.pack(">3h", -1, 256, 7)))
    array = read_idx(path)
    assert array.dtype == np.dtype("int16") and array.dtype.isnative
    assert array.tolist() == [-1, 256, 7]
    path.write_bytes(_idx(0x0D, (1, 2), struct.pack(">2f", 1.5, -2.0)))
    assert read_idx(path).tolist() == [[1.5, -2.0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),  # bad magic
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),  # unknown type code
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (_idx(0x08, (2, 3), bytes(5)), "5 bytes of data, but dimensions"),  # one byte short
        (_idx(0x08, (2, 3), bytes(7)), "7 bytes of data, but dimensions"),  # one byte too many
        (gzip.compress(_idx(0x08, (4, 4), bytes(16)))[:-12], "corrupt gzip data"),  # cut short
    ],
)
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(IdxError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ---- classes and wording ----

def test_classes_answers_and_captions() -> None:
    assert CLASS_NAMES == (
        "t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
    )
    for c in CLASSES:
        assert c.name == c.name.lower() and c.category in CATEGORIES
        assert c.phrase.endswith(c.name) or c.phrase.endswith(c.name + "s")
    assert caption(9) == "A photo of an ankle boot."
    assert caption(0) == "A photo of a t-shirt."
    assert caption(1) == "A photo of a pair of trousers."
    assert [c.category for c in CLASSES].count("footwear") == 3


# ---- the Debian package missing ----

def test_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    assert not fashion_available(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        synthesize_fashion(tmp_path / "out", "test", n=2, root=tmp_path)
    assert str(tmp_path) in str(info.value) and "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_reports_missing_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "fashion", "--out", str(tmp_path / "o"), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "make setup" in err


# ---- synthesis on the real files ----

@pytest.fixture(scope="module")
def raw_test() -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = fashion_files("test")
    return read_idx(images_path), read_idx(labels_path)


def _load(out: Path) -> tuple[list[dict], list[dict]]:
    return json.loads((out / "fashion.json").read_text()), json.loads((out / "labels.json").read_text())


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    out = tmp_path_factory.mktemp("fashion-test")
    synthesize_fashion(out, "test", n=25, seed=1)
    return out, *_load(out)


@needs_fashion
def test_raw_files_have_the_documented_shape(raw_test: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = raw_test
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert labels[0] == CLASS_NAMES.index("ankle boot")  # the test file's first image, as published


@needs_fashion
def test_balanced_subset_and_layout(test_split: tuple[Path, list[dict], list[dict]]) -> None:
    out, records, items = test_split
    counts = Counter(item["label"] for item in items)
    assert sum(counts.values()) == 25 and len(counts) == 10 and set(counts.values()) == {2, 3}
    assert sorted(p.name for p in (out / "images").iterdir()) == [Path(i["image"]).name for i in items]
    assert len(records) == 5 * 25 and {r["kind"] for r in records} == set(KINDS)
    captions = json.loads((out / "captions.json").read_text())
    questions = json.loads((out / "questions.json").read_text())
    assert captions + questions == sorted(records, key=lambda r: r["kind"] != "caption")
    assert {r["kind"] for r in captions} == {"caption"}
    conversations = json.loads((out / "conversations.json").read_text())
    assert [c["image"] for c in conversations] == [i["image"] for i in items]
    for conversation in conversations:  # the image's questions that no earlier one gives away
        turns = conversation["conversations"]
        pairs = [(q["value"].removeprefix("<image>\n"), a["value"])
                 for q, a in zip(turns[::2], turns[1::2], strict=True)]
        singles = [(r["conversations"][0]["value"].removeprefix("<image>\n"), r["answer"]) for r in questions
                   if r["image"] == conversation["image"]]
        assert pairs and len(set(pairs)) == len(pairs) and set(pairs) <= set(singles)
        assert turns[0]["value"].startswith("<image>\n")
        # Once the item is said (its question, or a yes about it), every other answer follows: it ends there.
        ends = [k for k, (_, answer) in enumerate(pairs) if answer == "yes" or answer in CLASS_NAMES]
        assert ends in ([], [len(pairs) - 1])
        assert sum(answer in ("yes", "no") for _, answer in pairs) <= 1  # one of each per image


@needs_fashion
def test_pixels_and_labels_are_the_source_files(
    test_split: tuple[Path, list[dict], list[dict]], raw_test: tuple[np.ndarray, np.ndarray]
) -> None:
    out, _, items = test_split
    images, labels = raw_test
    for item in items:
        assert item["image"] == f"images/test-{item['index']:06d}.png"
        assert item["label"] == labels[item["index"]] and item["class"] == CLASS_NAMES[item["label"]]
        with Image.open(out / item["image"]) as image:
            assert image.mode == "L" and image.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(image), images[item["index"]])


@needs_fashion
def test_answers_agree_with_labels(test_split: tuple[Path, list[dict], list[dict]]) -> None:
    _, records, items = test_split
    label_of = {item["image"]: item["label"] for item in items}
    phrases = "|".join(re.escape(c.phrase) for c in CLASSES)
    for r in records:
        assert set(r) == {"id", "image", "conversations", "kind", "answer"}
        human, gpt = r["conversations"]
        assert human["value"].startswith("<image>\n") and gpt["value"] == r["answer"]
        item = CLASSES[label_of[r["image"]]]
        question = human["value"].removesuffix(SHORT_ANSWER_SUFFIX)
        if r["kind"] == "caption":
            assert r["answer"] == f"A photo of {item.phrase}."
        elif r["kind"] == "item":
            assert r["answer"] == item.name
        elif r["kind"] == "category":
            assert r["answer"] == item.category and "footwear" in question
        else:
            (asked,) = re.findall(rf"\b(?:{phrases})\?$", question)
            assert r["answer"] == ("yes" if asked == item.phrase + "?" else "no"), r
    yesno = [r["answer"] for r in records if r["kind"] == "yesno"]
    assert yesno.count("yes") == yesno.count("no") == len(items)


@needs_fashion
def test_records_pass_data_check(test_split: tuple[Path, list[dict], list[dict]]) -> None:
    out, records, _ = test_split
    report = check_file(out / "fashion.json")
    assert report.ok and report.total == len(records)


@needs_fashion
def test_same_seed_same_bytes_and_larger_n_keeps_smaller(tmp_path: Path) -> None:
    a = synthesize_fashion(tmp_path / "a", "test", n=12, seed=4).parent
    b = synthesize_fashion(tmp_path / "b", "test", n=12, seed=4).parent
    c = synthesize_fashion(tmp_path / "c", "test", n=12, seed=5).parent
    big = synthesize_fashion(tmp_path / "big", "test", n=30, seed=4).parent
    for name in ("fashion.json", "labels.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert _load(a)[1] != _load(c)[1]
    small_records, small_items = _load(a)
    big_records, big_items = _load(big)
    assert all(item in big_items for item in small_items)
    assert all(record in big_records for record in small_records)  # an image's questions do not depend on n


@needs_fashion
def test_train_and_test_never_share_ids_or_images(
    tmp_path: Path, test_split: tuple[Path, list[dict], list[dict]]
) -> None:
    _, test_records, _ = test_split
    train = synthesize_fashion(tmp_path, "train", n=20, seed=1).parent
    train_records, train_items = _load(train)
    assert Counter(i["label"] for i in train_items) == Counter({k: 2 for k in range(10)})
    assert all(r["id"].startswith("train-") and r["image"].startswith("images/train-") for r in train_records)
    assert all(r["id"].startswith("test-") and r["image"].startswith("images/test-") for r in test_records)
    assert not {r["id"] for r in train_records} & {r["id"] for r in test_records}
    assert not {r["image"] for r in train_records} & {r["image"] for r in test_records}


@needs_fashion
def test_upscaled_images_and_bad_arguments(tmp_path: Path) -> None:
    out = synthesize_fashion(tmp_path, "test", n=2, image_size=64).parent
    for path in (out / "images").iterdir():
        with Image.open(path) as image:
            assert image.size == (64, 64)
    with pytest.raises(ValueError, match="image_size"):
        synthesize_fashion(tmp_path, "test", n=2, image_size=20)
    with pytest.raises(ValueError, match="0..10000"):
        synthesize_fashion(tmp_path, "test", n=10001)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'val'"):
        synthesize_fashion(tmp_path, "val", n=2)


@needs_fashion
def test_cli_writes_a_checked_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "fashion", "--out", str(tmp_path), "--split", "test", "--n", "10"]) == 0
    assert main(["data", "check", str(tmp_path / "fashion.json")]) == 0
    assert "50 of 50 samples are good" in capsys.readouterr().err
