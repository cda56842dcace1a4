"""Out-of-distribution warning: how unlike the training images an image is, from pooled vision features.

A detector is fitted on the frozen encoder's features of training images, mean-pooled over tokens:
Mahalanobis distance under a Ledoit-Wolf shrunk covariance (default), or cosine distance to the k-th nearest
training image. Its threshold is the 95th percentile of held-out training images' scores, so about 5 % of
in-distribution images are flagged. It lives in the model folder as ood.safetensors + ood.json.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from minillava.data.conversation import ImageSource

WEIGHTS, CONFIG = "ood.safetensors", "ood.json"
METHODS = ("mahalanobis", "knn")
FORMAT_VERSION = 1


@torch.inference_mode()
def pooled_features(model, images: Sequence[ImageSource], batch_size: int = 32, progress: bool = False
                    ) -> torch.Tensor:
    """(len(images), encoder width) float32: the vision encoder's tokens averaged, before the projector."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="vision features", unit="batch",
                      disable=not progress):
        pixels = model.pixel_values(list(images[start : start + batch_size]))
        out.append(model.vision(pixels.to(model.device)).float().mean(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.vision.hidden_size)


def auroc(in_scores: Sequence[float], out_scores: Sequence[float]) -> float:
    """P(an out-of-distribution score > an in-distribution score), ties counted half (Mann-Whitney)."""
    if not in_scores or not out_scores:
        raise ValueError("auroc needs at least one score on each side")
    wins = sum((o > i) + 0.5 * (o == i) for o in out_scores for i in in_scores)
    return wins / (len(in_scores) * len(out_scores))


@dataclass
class Detector:
    method: str
    tensors: dict[str, torch.Tensor]  # mahalanobis: mean, precision; knn: bank (unit rows)
    k: int = 5
    threshold: float | None = None  # scores above it are flagged; None: never (too few images to calibrate)
    info: dict = field(default_factory=dict)  # vision config, counts, shrinkage, measured AUROC

    # -- fitting ------------------------------------------------------------------------------------------
    @classmethod
    def fit_features(cls, features: torch.Tensor, method: str = "mahalanobis", k: int = 5) -> Detector:
        if method not in METHODS:
            raise ValueError(f"unknown OOD method {method!r}; choose one of {METHODS}")
        features = features.double()
        if len(features) < 2:
            raise ValueError("an OOD detector needs at least 2 training images")
        if method == "knn":
            bank = torch.nn.functional.normalize(features, dim=-1).float()
            return cls(method, {"bank": bank}, k=min(k, len(bank)), info={"n_fit": len(bank)})
        from sklearn.covariance import ledoit_wolf

        mean = features.mean(0)
        covariance, shrinkage = ledoit_wolf(features.numpy(), assume_centered=False)
        precision = torch.linalg.pinv(torch.from_numpy(covariance), hermitian=True)
        return cls(method, {"mean": mean.float(), "precision": precision.float()},
                   info={"n_fit": len(features), "shrinkage": float(shrinkage)})

    def score_features(self, features: torch.Tensor) -> list[float]:
        """Higher means less like the training images."""
        if self.method == "knn":
            bank = self.tensors["bank"]
            sims = torch.nn.functional.normalize(features.float(), dim=-1) @ bank.T
            kth = sims.topk(self.k, dim=-1).values[:, -1]
            return (1.0 - kth).tolist()
        centred = features.double() - self.tensors["mean"].double()
        squared = ((centred @ self.tensors["precision"].double()) * centred).sum(-1)
        return squared.clamp(min=0).sqrt().tolist()

    # -- with a model -------------------------------------------------------------------------------------
    def score(self, model, images: Sequence[ImageSource], batch_size: int = 32) -> list[float]:
        self.check_model(model)
        return self.score_features(pooled_features(model, images, batch_size))

    def flags(self, scores: Sequence[float]) -> list[bool]:
        return [self.threshold is not None and s > self.threshold for s in scores]

    def check_model(self, model) -> None:
        stored = self.info.get("vision")
        current = asdict(model.config.vision)
        if stored is not None and stored != current:
            raise ValueError(f"this OOD detector was fitted on vision encoder {stored}, not {current}: refit it")

    # -- saving -------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(folder / WEIGHTS))
        config = {"version": FORMAT_VERSION, "method": self.method, "k": self.k, "threshold": self.threshold,
                  "info": self.info}
        (folder / CONFIG).write_text(json.dumps(config, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Detector | None:
        """The detector saved in a model folder, or None when it has none."""
        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            return None
        config = json.loads((folder / CONFIG).read_text())
        if config.get("version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"{folder / CONFIG}: format {config['version']} is newer than this minillava")
        if not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder / CONFIG} exists but {folder / WEIGHTS} is missing: refit the detector")
        return cls(config["method"], load_file(str(folder / WEIGHTS)), config["k"], config["threshold"],
                   config.get("info", {}))


def fit_ood(model, images: Sequence[ImageSource], method: str = "mahalanobis", k: int = 5, holdout: float = 0.2,
            quantile: float = 0.95, seed: int = 0, progress: bool = False) -> Detector:
    """Fit a detector on training images; the flag threshold comes from a held-out share of them."""
    detector = fit_features(pooled_features(model, images, progress=progress), method, k, holdout, quantile, seed)
    detector.info["vision"] = asdict(model.config.vision)
    return detector


def fit_features(features: torch.Tensor, method: str = "mahalanobis", k: int = 5, holdout: float = 0.2,
                 quantile: float = 0.95, seed: int = 0) -> Detector:
    """`fit_ood` on features already pooled: (n images, width)."""
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    n_held = round(len(order) * holdout) if len(order) >= 10 else 0
    held, fit = order[:n_held], order[n_held:]
    threshold = None  # too few images to calibrate: never flag
    if n_held:
        # Scores of images the detector has not seen set the threshold; in-sample scores would be too low.
        partial = Detector.fit_features(features[fit], method, k)
        held_scores = torch.tensor(partial.score_features(features[held]))
        threshold = float(torch.quantile(held_scores, quantile))
    detector = Detector.fit_features(features, method, k)  # the final statistics use every image
    detector.threshold = threshold
    detector.info |= {"n_holdout": n_held, "quantile": quantile, "pooling": "mean over encoder tokens"}
    return detector


def score(model, images: Sequence[ImageSource], detector: Detector | None = None) -> list[float]:
    """OOD scores of images (higher: less like the training images); the detector defaults to
    `model.ood_detector` (set it from `Detector.load(folder)`)."""
    detector = detector or getattr(model, "ood_detector", None)
    if detector is None:
        raise ValueError("no OOD detector: fit one with fit_ood() or load one with Detector.load(model_folder)")
    return detector.score(model, images)


def measure(model, detector: Detector, in_images: Sequence[ImageSource],
            others: dict[str, Sequence[ImageSource]]) -> dict[str, float]:
    """AUROC of telling held-out training-distribution images from each other set."""
    inside = detector.score(model, in_images)
    return {name: auroc(inside, detector.score(model, images)) for name, images in others.items()}


def ood_lines(model, folder: str | Path, images: Sequence[ImageSource]) -> list[str]:
    """One line per image with its OOD score, when the model folder has a detector; else none."""
    detector = Detector.load(folder)
    if detector is None or not images:
        return []
    scores = detector.score(model, images)
    lines = []
    for image, value, flag in zip(images, scores, detector.flags(scores), strict=True):
        name = image if isinstance(image, str | Path) else "<image>"
        verdict = "UNLIKE the training images: the answer may be unreliable" if flag else "like the training images"
        limit = "none" if detector.threshold is None else f"{detector.threshold:.3f}"
        lines.append(f"ood {name}: score {value:.3f} (threshold {limit}): {verdict}")
    return lines
