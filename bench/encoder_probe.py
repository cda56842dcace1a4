"""What the embedded encoder's tokens can tell the language model: linear probes on EfficientNet-Lite0 states.

The demo asks about the colour and shape of objects in synthetic scenes and about the class of Fashion-MNIST
items. A language model reading the encoder's tokens cannot recover what the tokens do not hold, so this script
measures what they hold, per choice of `feature_layer` (states: 0 stem, 1-16 blocks, 17 head):

- shapes, per token: a logistic regression from one token (a 32 x 32 px cell of the 7 x 7 grid) to the colour
  and the shape of the object centred in that cell, fitted and scored on cells that hold an object;
- Fashion-MNIST, per image: a logistic regression from the tokens' mean and max to the item's class.

Both are lower bounds (the projector and the language model are not linear), but they rank the layers, and a
layer that a linear probe reads badly is one the demo's few hundred steps read badly too.

    python bench/encoder_probe.py [--train-images 400] [--test-images 120] [--layers 17 16 11 11,16] [--c 0.1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from minillava.data.fashion import fashion_available, synthesize_fashion
from minillava.data.synth import COLORS, SHAPES, synthesize_shapes
from minillava.model.config import VisionConfig
from minillava.model.vision.efficientnet import EfficientNetLite0

GRID = 7


def encode(encoder: EfficientNetLite0, paths: list[Path], batch: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(paths), batch):
        pixels = torch.cat([encoder.transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch]])
        out.append(encoder(pixels))
    return torch.cat(out).numpy()  # (images, 49, width)


def shape_cells(folder: Path, image_size: int) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Image paths and, per grid cell, the colour and shape index of the object centred there (or 'none')."""
    scenes = json.loads((folder / "scenes.json").read_text())
    colors = np.full((len(scenes), GRID * GRID), len(COLORS))
    shapes = np.full((len(scenes), GRID * GRID), len(SHAPES))
    for i, scene in enumerate(scenes):
        for s in scene["shapes"]:
            cell = (s["y"] * GRID // image_size) * GRID + s["x"] * GRID // image_size
            colors[i, cell], shapes[i, cell] = list(COLORS).index(s["color"]), SHAPES.index(s["shape"])
    return [folder / s["image"] for s in scenes], colors.ravel(), shapes.ravel()


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, c: float = 0.1) -> float:
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(max_iter=300, C=c).fit(scaler.transform(train_x), train_y)
    return float(np.mean(model.predict(scaler.transform(test_x)) == test_y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--test-images", type=int, default=120)
    parser.add_argument("--layers", nargs="+", default=["17", "16", "11", "11,16"],
                        help="feature_layer choices; comma-separated states are concatenated")
    parser.add_argument("--c", type=float, default=0.1,
                        help="inverse L2 strength of the probes; a small one (0.003) asks what little training "
                             "reads, i.e. how plainly the tokens hold it")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize_shapes(tmp / "shapes-train", args.train_images, seed=0)
        synthesize_shapes(tmp / "shapes-test", args.test_images, seed=1)
        train_paths, train_colors, train_shapes = shape_cells(tmp / "shapes-train", 224)
        test_paths, test_colors, test_shapes = shape_cells(tmp / "shapes-test", 224)
        # Only cells with an object centred in them: a large shape also fills its neighbours, and asking the
        # probe to call those "no object" mixes finding objects into reading their colour.
        train_on, test_on = train_colors < len(COLORS), test_colors < len(COLORS)
        fashion = fashion_available()
        if fashion:
            synthesize_fashion(tmp / "fashion-train", "train", n=2 * args.train_images, seed=0)
            synthesize_fashion(tmp / "fashion-test", "test", n=2 * args.test_images, seed=0)
            labels = {split: json.loads((tmp / f"fashion-{split}" / "labels.json").read_text())
                      for split in ("train", "test")}
        else:
            print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): shapes only")
        print(f"{'feature_layer':>14} {'width':>6} {'colour/token':>13} {'shape/token':>12} {'fashion item':>13} "
              f"{'seconds':>8}")
        for spec in args.layers:
            layers = [int(x) for x in spec.split(",")]
            start = time.perf_counter()
            encoder = EfficientNetLite0(VisionConfig(feature_layer=layers))
            train_x, test_x = (encode(encoder, p).reshape(-1, encoder.hidden_size) for p in (train_paths, test_paths))
            train_x, test_x = train_x[train_on], test_x[test_on]
            colour = probe(train_x, train_colors[train_on], test_x, test_colors[test_on], args.c)
            shape = probe(train_x, train_shapes[train_on], test_x, test_shapes[test_on], args.c)
            item = float("nan")
            if fashion:
                pooled = {}
                for split, rows in labels.items():
                    tokens = encode(encoder, [tmp / f"fashion-{split}" / r["image"] for r in rows])
                    pooled[split] = np.concatenate([tokens.mean(1), tokens.max(1)], axis=1)
                item = probe(pooled["train"], np.array([r["label"] for r in labels["train"]]),
                             pooled["test"], np.array([r["label"] for r in labels["test"]]), args.c)
            print(f"{str(layers):>14} {encoder.hidden_size:>6} {colour:>13.1%} {shape:>12.1%} {item:>13.1%} "
                  f"{time.perf_counter() - start:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
