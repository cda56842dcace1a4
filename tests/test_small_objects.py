"""The small-objects data set: determinism, answers that match the scene, a held-out split, objects that are small,
and the AnyRes recipe that trains on it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minillava.data.small_objects import SHAPES, SPLITS, synthesize_small_objects
from minillava.data.synth import COLORS

CANVAS, VIEW = 256, 64  # the recipe's canvas and its tower's view
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "anyres-small-objects.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small-objects")
    synthesize_small_objects(out, n=6, n_held_out=4, seed=5, image_size=CANVAS, max_objects=3)
    return out


def _records(out: Path, split: str) -> list[dict]:
    return json.loads((out / SPLITS[split]).read_text())


def _scenes(out: Path) -> dict[str, dict]:
    return {s["image"]: s for s in json.loads((out / "scenes.json").read_text())}


def test_same_seed_same_bytes_other_seed_other_images(dataset: Path, tmp_path: Path) -> None:
    synthesize_small_objects(tmp_path / "again", n=6, n_held_out=4, seed=5, image_size=CANVAS, max_objects=3)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert all((dataset / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    synthesize_small_objects(tmp_path / "other", n=6, n_held_out=0, seed=6, image_size=CANVAS, max_objects=3)
    image = "images/train-000000.png"
    assert (dataset / image).read_bytes() != (tmp_path / "other" / image).read_bytes()


def test_answers_name_the_shape_of_the_object_of_the_asked_colour(dataset: Path) -> None:
    scenes = _scenes(dataset)
    asked = 0
    for split in SPLITS:
        for record in _records(dataset, split):
            question, reply = (turn["value"] for turn in record["conversations"])
            assert question.startswith("<image>\n") and reply == record["answer"] in SHAPES
            color = re.search(r"\b(" + "|".join(COLORS) + r")\b", question).group(1)
            matching = [s for s in scenes[record["image"]]["shapes"] if s["color"] == color]
            assert len(matching) == 1 and matching[0]["shape"] == reply
            # The pixels agree: the object's centre has its drawn colour (noise and jitter stay small).
            with Image.open(dataset / record["image"]) as image:
                centre = np.asarray(image.convert("RGB"))[matching[0]["y"], matching[0]["x"]].astype(int)
            assert np.abs(centre - np.array(matching[0]["fill"])).max() <= 20
            asked += 1
    assert asked == sum(len(s["shapes"]) for s in scenes.values())  # one question per object


def test_held_out_images_are_not_training_images(dataset: Path) -> None:
    def images(split: str) -> set[str]:
        return {r["image"] for r in _records(dataset, split)}

    train, held_out = images("train"), images("held-out")
    assert len(train) == 6 and len(held_out) == 4 and not train & held_out
    digest = {name: hashlib.sha256((dataset / name).read_bytes()).hexdigest() for name in train | held_out}
    assert not {digest[n] for n in train} & {digest[n] for n in held_out}


def test_objects_are_blobs_in_one_view_and_shapes_in_a_tile(dataset: Path) -> None:
    for scene in _scenes(dataset).values():
        for s in scene["shapes"]:
            side = 2 * s["radius"]
            assert side * VIEW / CANVAS <= 4  # at most 4 px across once the canvas is resized to one view
            assert side >= 10  # at least 10 px across at the canvas's (an AnyRes tile's) resolution


def test_refuses_a_canvas_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 128"):
        synthesize_small_objects(tmp_path, n=1, image_size=64)


def test_the_recipe_differs_from_its_single_view_by_one_override() -> None:
    from minillava.train.config import load_recipe
    from minillava.train.data import GENERATORS

    anyres = load_recipe(RECIPE)
    single = load_recipe(RECIPE, ["model.anyres=null"])
    assert anyres.model.anyres_config().grid_pinpoints == [[CANVAS, CANVAS]]
    assert single.model.anyres_config() is None
    anyres.model.anyres = None
    assert anyres.to_dict() == single.to_dict()
    synth = dict(single.stages[0].data[0].synth)
    assert GENERATORS[synth.pop("kind")] is synthesize_small_objects
    assert synth["image_size"] == CANVAS and single.model.image_size == VIEW


def test_a_recipe_source_and_the_cli_generate_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from minillava.cli import main
    from minillava.train.config import DataSource
    from minillava.train.data import ensure_synthetic

    source = DataSource(str(tmp_path / "recipe" / "train.json"),
                        synth={"kind": "small-objects", "n": 2, "n_held_out": 1, "seed": 0})
    ensure_synthetic(source)
    assert len(_records(tmp_path / "recipe", "held-out")) >= 1
    assert main(["data", "synth", "small-objects", "--out", str(tmp_path / "cli"), "--n", "2", "--n-held-out", "1",
                 "--max-objects", "2"]) == 0
    capsys.readouterr()
    for split in SPLITS.values():
        assert main(["data", "check", str(tmp_path / "cli" / split), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
