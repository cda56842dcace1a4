"""The OOD detector on synthetic feature distributions, the AUROC helper, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch

from minillava.eval.ood import Detector, auroc


def test_auroc_by_hand():
    assert auroc([1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [1, 2]) == 0.0
    assert auroc([1, 3], [2, 4]) == 0.75  # out 2 beats in 1; out 4 beats both: 3 of 4 pairs
    assert auroc([1, 2], [2, 2]) == 0.75  # ties count half: (0.5 + 1) * 2 / 4
    with pytest.raises(ValueError):
        auroc([], [1])


@pytest.mark.parametrize(("method", "at_least"), [("mahalanobis", 0.95), ("knn", 0.85)])
def test_detector_separates_shifted_distributions(method, at_least):
    torch.manual_seed(0)
    dim = 16
    mixing = torch.randn(dim, dim) / 4
    train = torch.randn(300, dim) @ mixing + 1.0
    heldout = torch.randn(100, dim) @ mixing + 1.0
    shifted = torch.randn(100, dim) @ mixing + 1.0 + 0.8 * torch.randn(dim)  # same shape, moved mean
    detector = Detector.fit_features(train, method, k=5)
    inside = detector.score_features(heldout)
    # kNN works on directions (cosine), so a moved mean shows less than under Mahalanobis.
    assert auroc(inside, detector.score_features(shifted)) > at_least
    # Two samples of the training distribution cannot be told apart.
    assert 0.35 < auroc(inside, detector.score_features(torch.randn(100, dim) @ mixing + 1.0)) < 0.65


def test_mahalanobis_is_the_euclidean_distance_under_identity_covariance():
    detector = Detector("mahalanobis", {"mean": torch.zeros(3), "precision": torch.eye(3)})
    assert detector.score_features(torch.tensor([[3.0, 4.0, 0.0]])) == pytest.approx([5.0])
    knn = Detector("knn", {"bank": torch.eye(3)}, k=1)
    assert knn.score_features(torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])) == pytest.approx(
        [0.0, 1 - 2 ** -0.5])


def test_save_and_load(tmp_path):
    detector = Detector.fit_features(torch.randn(40, 4), "mahalanobis")
    detector.threshold, detector.info["auroc"] = 3.5, {"photos": 0.9}
    detector.save(tmp_path)
    assert json.loads((tmp_path / "ood.json").read_text())["threshold"] == 3.5
    loaded = Detector.load(tmp_path)
    x = torch.randn(5, 4)
    assert loaded.score_features(x) == pytest.approx(detector.score_features(x))
    assert loaded.flags([3.0, 4.0]) == [False, True] and loaded.info["auroc"] == {"photos": 0.9}
    assert Detector.load(tmp_path / "nothing") is None
    (tmp_path / "ood.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ood.safetensors is missing"):
        Detector.load(tmp_path)
    with pytest.raises(ValueError, match="unknown OOD method"):
        Detector.fit_features(torch.randn(5, 2), "svm")
