"""POPE: yes/no parsing from the first sentence, and the confusion-matrix metrics."""

from __future__ import annotations

import pytest

from minillava.eval.pope import parse_yes_no, score_pope


@pytest.mark.parametrize(("reply", "expected"), [
    ("Yes", "yes"), ("yes, there is a dog.", "yes"), ("No", "no"), ("No.", "no"), ("NO", "no"),
    ("There is not a dog in the image.", "no"), ("There is no dog.", "no"),
    ("Yes. There is no cat though.", "yes"),  # only the first sentence counts
    ("There is a dog, not a cat.", "no"),  # "not" anywhere in the first sentence
    ("Nothing to see", "yes"), ("", "yes"),  # "nothing" is not the word "no"; default is yes
])
def test_parse_yes_no(reply, expected):
    assert parse_yes_no(reply) == expected


def test_pope_counts_by_hand():
    # labels: 5 yes, 5 no. predictions: 4 of the yes answered yes (TP 4, FN 1), 2 of the no answered yes (FP 2).
    labels = ["yes"] * 5 + ["no"] * 5
    replies = ["Yes."] * 4 + ["No."] + ["Yes, there is."] * 2 + ["No, there is not."] * 3
    records = [{"id": str(i), "prediction": p, "answer": a, "kind": "random" if i % 2 else "adversarial"}
               for i, (p, a) in enumerate(zip(replies, labels, strict=True))]
    m = score_pope(records).metrics
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (4, 2, 3, 1)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["recall"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(2 * (4 / 6) * 0.8 / (4 / 6 + 0.8))  # = 8/11
    assert m["f1"] == pytest.approx(8 / 11)
    assert m["yes_ratio"] == pytest.approx(0.6)
    # odd ids "random": ids 1,3 (yes, correct), 5 (no, FP), 7, 9 (no, correct) -> 4 of 5
    assert m["by_kind"]["random"] == pytest.approx(0.8)


def test_pope_without_yes_predictions_has_zero_precision_not_an_error():
    m = score_pope([{"id": "1", "prediction": "no", "answer": "yes"}]).metrics
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="yes or no"):
        score_pope([{"id": "1", "prediction": "no", "answer": "maybe"}])
