"""Multiple choice: the prompt, and the first option letter of a reply in its usual spellings."""

from __future__ import annotations

import pytest

from minillava.eval.choice import answer_letter, format_prompt, parse_choice, score_choices


def test_prompt_format():
    assert format_prompt("Which is a fruit?", ["car", "apple", "chair"]) == (
        "Which is a fruit?\nA. car\nB. apple\nC. chair\nAnswer with the option's letter from the given choices "
        "directly.")
    with pytest.raises(ValueError, match="2 to 26"):
        format_prompt("?", ["only"])


@pytest.mark.parametrize(("reply", "expected"), [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("B) apple", "B"), ("[C]", "C"), ("b", None),
    ("The answer is B", "B"), ("The answer is B.", "B"), ("Answer: (C)", "C"), ("answer: c", None),
    ("I think the answer is C because A is wrong.", "C"),  # the named answer wins over an earlier letter
    ("C, since A is wrong", "C"),  # otherwise the first letter standing alone
    ("A. car", "A"), ("A", "A"),
    ("A fruit, so B.", "B"),  # "A" before a lowercase word is the article
    ("Option B is right", "B"),
    ("D", None),  # not one of the three options
    ("", None), ("I don't know", None),
])
def test_parse_choice_variants(reply, expected):
    assert parse_choice(reply, num_choices=3) == expected


def test_parse_choice_falls_back_to_the_text_of_one_choice():
    choices = ["car", "apple", "chair"]
    assert parse_choice("It is an apple", choices=choices) == "B"
    assert parse_choice("A car or an apple", choices=choices) is None  # two choices quoted: no answer


def test_answer_letter_and_accuracy():
    assert answer_letter("(b)") == "B" and answer_letter("apple", ["car", "apple"]) == "B"
    with pytest.raises(ValueError, match="neither"):
        answer_letter("pear", ["car", "apple"])
    records = [
        {"id": "1", "prediction": "B", "answer": "B", "choices": ["x", "y", "z"]},
        {"id": "2", "prediction": "The answer is A", "answer": "y", "choices": ["x", "y", "z"]},
        {"id": "3", "prediction": "(C)", "answer": "C", "kind": "science"},
        {"id": "4", "prediction": "no idea", "answer": "A", "kind": "science"},
    ]
    scored = score_choices(records)
    assert [d["parsed"] for d in scored.details] == ["B", "A", "C", None]
    assert scored.metrics["accuracy"] == 0.5
    assert scored.metrics["by_kind"] == {"science": 0.5}
