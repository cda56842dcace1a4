"""check_images / check_file: every bad sample reported once, with its index, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from minillava.data.conversation import Conversation, SampleError, Turn
from minillava.data.formats import DataFileError
from minillava.data.validate import CheckReport, check_file, check_images


def save_image(path: Path, mode: str, size: tuple[int, int] = (8, 6)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        image = Image.fromarray(np.arange(size[0] * size[1], dtype=np.uint16).reshape(size[1], size[0]) * 500)
        assert image.mode == "I;16"
    elif mode == "P":
        image = Image.new("RGB", size, (200, 30, 30)).quantize(colors=4)
    else:
        image = Image.new(mode, size)
    image.save(path)
    return path.name


def sample(image: str | None, *, id: str, text: str = "<image>\nWhat is it?", role: str = "gpt") -> dict:
    record: dict[str, Any] = {
        "id": id,
        "conversations": [{"from": "human", "value": text}, {"from": role, "value": "A shape."}],
    }
    if image is not None:
        record["image"] = f"images/{image}"
    return record


def conv_with(*images: Any) -> Conversation:
    turns = [Turn("user", "<image>" * len(images)), Turn("assistant", "x")]
    return Conversation(turns=turns, images=list(images), id="c1")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "I;16", "LA", "1"])
def test_every_common_mode_passes(tmp_path: Path, mode: str) -> None:
    save_image(tmp_path / "a.png", mode)
    check_images(conv_with(tmp_path / "a.png"))


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(SampleError) as info:
        check_images(conv_with(tmp_path / "images" / "3.png"), image_root=tmp_path)
    assert info.value.reason == "image 'images/3.png' not found"
    assert info.value.sample_id == "c1"


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(SampleError) as info:
        check_images(conv_with(tmp_path / "bad.png"), image_root=tmp_path)
    assert info.value.reason == "image 'bad.png': not an image, or a format Pillow cannot read"


def test_truncated_image_is_caught(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match="image 't.jpg'"):
        check_images(conv_with(tmp_path / "t.jpg"), image_root=tmp_path)


def test_over_the_pixel_limit(tmp_path: Path) -> None:
    save_image(tmp_path / "big.png", "RGB", (40, 30))
    check_images(conv_with(tmp_path / "big.png"), max_pixels=40 * 30)
    with pytest.raises(SampleError, match="image 'big.png'"):
        check_images(conv_with(tmp_path / "big.png"), max_pixels=40 * 30 - 1, image_root=tmp_path)


def test_in_memory_images_are_checked_too() -> None:
    check_images(conv_with(Image.new("RGBA", (4, 4))))


def make_dataset(tmp: Path) -> Path:
    images = tmp / "images"
    good = [save_image(images / f"{mode.replace(';', '_')}.png", mode) for mode in ("RGB", "RGBA", "P", "L", "I;16")]
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    records = [
        sample(good[0], id="rgb"),  # 0
        sample("missing.png", id="missing"),  # 1 bad
        sample(good[1], id="rgba", text="What is this?\n<image>"),  # 2
        sample("corrupt.png", id="corrupt"),  # 3 bad
        sample(good[2], id="mismatch", text="<image><image> compare"),  # 4 bad
        sample(good[3], id="role", role="bot"),  # 5 bad
        sample(None, id="text-only", text="What is 2+2?"),  # 6
        {
            "id": "no-reply",
            "image": f"images/{good[4]}",
            "conversations": [{"from": "human", "value": "<image>"}],
        },
        sample(good[4], id="i16"),  # 8
    ]
    path = tmp / "data.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def test_check_file_reports_exactly_the_bad_samples(tmp_path: Path) -> None:
    path = make_dataset(tmp_path)
    report = check_file(path)
    assert isinstance(report, CheckReport)
    assert report.total == 9
    assert not report.ok
    rows = report.to_json()
    assert [(r["index"], r["id"]) for r in rows] == [
        (1, "missing"),
        (3, "corrupt"),
        (4, "mismatch"),
        (5, "role"),
        (7, "no-reply"),
    ]
    reasons = [r["reason"] for r in rows]
    assert reasons[0] == "image 'images/missing.png' not found"
    assert reasons[1].startswith("image 'images/corrupt.png': cannot open")  # a PNG header, then garbage
    assert reasons[2].startswith("2 <image> placeholders but 1 image")
    assert "unknown role 'bot'" in reasons[3]
    assert reasons[4] == "no assistant reply to learn from"
    for err, row in zip(report.errors, rows, strict=True):
        assert str(err).startswith(f"{path}[{row['index']}] (id {row['id']!r}): ")
    json.dumps(rows)  # the report is plain JSON


def test_check_file_clean_dataset_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_image(tmp_path / "pics" / "a.png", "RGB")
    path = tmp_path / "data.jsonl"
    record = {"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "ho"}]}
    path.write_text(json.dumps({**record, "images": ["a.png"]}) + "\n", encoding="utf-8")
    report = check_file(path, image_root=tmp_path / "pics", show_progress=True)
    assert report.ok
    assert (report.total, report.to_json()) == (1, [])
    assert "checking" in capsys.readouterr().err  # the tqdm bar


def test_check_file_pixel_limit_and_format(tmp_path: Path) -> None:
    save_image(tmp_path / "images" / "a.png", "RGB", (20, 20))
    path = tmp_path / "data.json"
    path.write_text(json.dumps([sample("a.png", id="a")]), encoding="utf-8")
    assert check_file(path, fmt="llava-pretrain").ok
    report = check_file(path, max_pixels=100)
    assert [r["index"] for r in report.to_json()] == [0]
    with pytest.raises(ValueError, match="unknown data format"):
        check_file(path, fmt="LLaVA")


def test_check_file_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found"):
        check_file(tmp_path / "nope.json")
