"""POPE object-hallucination probing: yes/no questions scored with "yes" as the positive class."""

from __future__ import annotations

import re

from minillava.eval.scored import Scored, references, with_kinds

PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z]+")


def parse_yes_no(reply: str) -> str:
    """"no" when the reply's first sentence has the word "no" or "not", else "yes" (the POPE rule)."""
    first = _SENTENCE_END.split(reply.strip(), maxsplit=1)[0]
    words = set(_WORD.findall(first.lower()))
    return "no" if words & {"no", "not"} else "yes"


def label(answer: str) -> str:
    word = answer.strip().lower().rstrip(".!")
    if word not in ("yes", "no"):
        raise ValueError(f"POPE answers must be yes or no, got {answer!r}")
    return word


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def pope_metrics(predicted: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 (yes positive) and the share of yes among the predictions."""
    pairs = list(zip(predicted, labels, strict=True))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, len(pairs)), "precision": precision, "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall), "yes_ratio": _ratio(tp + fp, len(pairs)),
        "n": len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def score_pope(predictions: list[dict]) -> Scored:
    parsed = [parse_yes_no(r["prediction"]) for r in predictions]
    labels = [label(references(r)[0]) for r in predictions]
    details = [{"parsed": p, "score": float(p == t)} for p, t in zip(parsed, labels, strict=True)]
    return with_kinds(pope_metrics(parsed, labels), predictions, details)
