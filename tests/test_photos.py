"""The sample photos: every listed photo loads here, records pass `data check`, a missing photo is skipped."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from minillava.cli import main
from minillava.data import photos
from minillava.data.photos import KINDS, MAX_SIDE, PHOTO_SOURCES, PHOTOS, Photo, synthesize_photos
from minillava.data.synth import SHORT_ANSWER_SUFFIX
from minillava.data.validate import check_file


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("photos")
    path = synthesize_photos(out)
    assert path == out / "photos.json"
    return out, json.loads(path.read_text())


def test_table_is_well_formed() -> None:
    names = [p.name for p in PHOTOS]
    assert len(names) == len(set(names)) >= 12
    for p in PHOTOS:
        assert p.source in PHOTO_SOURCES and re.fullmatch(r"[a-z_]+", p.name)
        assert p.caption[0].isupper() and p.caption.endswith(".")
        assert 2 <= len(p.questions) <= 4, p.name
        for kind, question, answer in p.questions:
            assert kind in KINDS and kind != "caption" and question.endswith("?")
            # Short reference answers, as a VQA-normalised exact match compares them.
            assert re.fullmatch(r"[a-z0-9-]+( [a-z0-9-]+){0,2}", answer), (p.name, answer)
            if kind == "yesno":
                assert answer in ("yes", "no")
    assert {p.source for p in PHOTOS} == set(PHOTO_SOURCES)


def test_every_photo_loads_and_records_pass_check(written: tuple[Path, list[dict]]) -> None:
    out, records = written
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{p.name}.png" for p in PHOTOS)
    assert len(records) == sum(1 + len(p.questions) for p in PHOTOS)
    report = check_file(out / "photos.json")
    assert report.ok and report.total == len(records), [e.describe() for e in report.errors]


def test_records_follow_the_table(written: tuple[Path, list[dict]]) -> None:
    _, records = written
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    by_image: dict[str, list[dict]] = {}
    for r in records:
        assert set(r) == {"id", "image", "conversations", "kind", "answer"}
        human, gpt = r["conversations"]
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert gpt["value"] == r["answer"]
        by_image.setdefault(r["image"], []).append(r)
    for p in PHOTOS:
        rows = by_image[f"images/{p.name}.png"]
        assert (rows[0]["kind"], rows[0]["answer"]) == ("caption", p.caption)
        asked = [r["conversations"][0]["value"][len("<image>\n"):].removesuffix(SHORT_ANSWER_SUFFIX) for r in rows[1:]]
        assert [(r["kind"], q, r["answer"]) for r, q in zip(rows[1:], asked, strict=True)] == list(p.questions)


def test_large_photos_are_scaled_down(written: tuple[Path, list[dict]]) -> None:
    out, _ = written
    sizes = {}
    for path in (out / "images").iterdir():
        with Image.open(path) as image:
            sizes[path.stem] = image.size
            assert image.mode in ("RGB", "L")
    assert all(max(size) <= MAX_SIDE for size in sizes.values())
    assert sizes["retina"] == (MAX_SIDE, MAX_SIDE)  # 1411 x 1411 in scikit-image
    assert sizes["cat"] == (451, 300)  # small ones keep their size


def test_missing_photos_are_skipped_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def not_installed(key: str) -> Image.Image:
        raise ModuleNotFoundError("No module named 'fakepkg'")

    monkeypatch.setitem(PHOTO_SOURCES, "fakepkg", not_installed)
    table = (
        Photo("gone", "skimage", "no_such_photo", "Nothing.", (("yesno", "Is it there?", "no"),) * 2),
        PHOTOS[2],
        Photo("absent", "fakepkg", "x.jpg", "Nothing.", (("yesno", "Is it there?", "no"),) * 2),
    )
    monkeypatch.setattr(photos, "PHOTOS", table)
    with caplog.at_level(logging.WARNING, logger="minillava.data.photos"):
        records = json.loads(synthesize_photos(tmp_path).read_text())
    assert {r["image"] for r in records} == {f"images/{PHOTOS[2].name}.png"}
    assert [p.name for p in (tmp_path / "images").iterdir()] == [f"{PHOTOS[2].name}.png"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "'gone'" in warnings[0] and "no_such_photo" in warnings[0]
    assert "'absent'" in warnings[1] and "fakepkg" in warnings[1]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(photos, "PHOTOS", PHOTOS[:2])  # the full set is covered above; keep this one quick
    assert main(["data", "synth", "photos", "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'photos.json'}" in capsys.readouterr().out
    assert check_file(tmp_path / "photos.json").ok
