"""VQAv2 accuracy: the official normalisation rules and leave-one-out over 10 answers, checked by hand."""

from __future__ import annotations

import pytest

from minillava.eval.vqa import normalize_answer, score_vqa, vqa_accuracy


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes", "yes"),
    ("  two dogs.\n", "2 dogs"),  # number word, trailing period, surrounding space
    ("none", "0"), ("ten", "10"),
    ("The Cat", "cat"), ("a dog and an apple", "dog and apple"),  # articles dropped
    ("dont", "don't"), ("isnt it", "isn't it"), ("couldnt've", "couldn't've"),  # contractions restored
    ("don't", "don't"),  # the apostrophe is not punctuation
    ("black-and-white", "black and white"),  # a mark with no space beside it becomes a space
    ("red, white", "red white"),  # a mark next to a space is deleted
    ("2,000", "2000"),  # digit-comma-digit: every mark deleted
    ("3.5", "3.5"), ("1.", "1"), ("u.s.", "us"),  # a period stays only before a digit
    ("yes!", "yes"), ("(left)", "left"), ("tab\there", "tab here"),
    ("Well", "well"), ("its", "its"),  # real words are not turned into contractions
])
def test_normalisation_follows_the_official_rules(text, expected):
    assert normalize_answer(text) == expected


TEN = ["2", "2", "2", "two", "3", "3", "3", "3", "4", "4"]  # "two" normalises to "2": 4 humans said 2


@pytest.mark.parametrize(("prediction", "answers", "expected"), [
    # matches m among 10: leaving out a matching answer leaves m-1, any other leaves m; each min(1, ./3).
    ("5", ["1"] * 10, 0.0),
    ("1", ["1"] + ["0"] * 9, 0.3),  # 1 x 0 + 9 x 1/3
    ("1", ["1"] * 2 + ["0"] * 8, 0.6),  # 2 x 1/3 + 8 x 2/3
    ("1", ["1"] * 3 + ["0"] * 7, 0.9),  # 3 x 2/3 + 7 x 1
    ("1", ["1"] * 4 + ["0"] * 6, 1.0),  # 4 x 1 + 6 x 1
    ("two", TEN, 1.0),  # 4 matches after normalisation
    ("3", TEN, 1.0),
    ("4", TEN, 0.6),
])
def test_leave_one_out_over_ten_answers(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_fewer_than_ten_answers_is_exact_match_after_normalisation():
    assert vqa_accuracy("Two.", ["2"]) == 1.0
    assert vqa_accuracy("The red one", ["blue", "red one"]) == 1.0
    assert vqa_accuracy("red", ["red one"]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("x", [])


def test_score_vqa_averages_and_groups_by_kind():
    records = [
        {"id": "1", "prediction": "red", "answer": "red", "kind": "color"},
        {"id": "2", "prediction": "blue", "answer": "red", "kind": "color"},
        {"id": "3", "prediction": "3", "answers": ["three"], "kind": "count"},
        {"id": "4", "prediction": "1", "answers": ["1"] * 3 + ["0"] * 7},
    ]
    scored = score_vqa(records)
    assert [d["score"] for d in scored.details] == pytest.approx([1.0, 0.0, 1.0, 0.9])
    assert scored.metrics["accuracy"] == pytest.approx(2.9 / 4)
    assert scored.metrics["by_kind"] == {"color": 0.5, "count": 1.0}
    assert scored.metrics["n_by_kind"] == {"color": 2, "count": 1}
    with pytest.raises(ValueError, match="no `answers` or `answer`"):
        score_vqa([{"id": "x", "prediction": "a"}])
