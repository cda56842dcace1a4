"""What every task's scorer returns: metrics for the set, and fields for each prediction."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Scored:
    metrics: dict
    # One dict per prediction, in order; each has "score", the sample's value of the task's headline metric.
    details: list[dict] = field(default_factory=list)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def by_kind(records: list[dict], details: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean per-sample score for each value of the records' optional "kind" key, and the counts."""
    groups: dict[str, list[float]] = defaultdict(list)
    for record, detail in zip(records, details, strict=True):
        if record.get("kind") is not None:
            groups[str(record["kind"])].append(float(detail["score"]))
    return {k: mean(v) for k, v in sorted(groups.items())}, {k: len(v) for k, v in sorted(groups.items())}


def with_kinds(metrics: dict, records: list[dict], details: list[dict]) -> Scored:
    """Add by_kind / n_by_kind to the metrics when any record has a kind."""
    kinds, counts = by_kind(records, details)
    if kinds:
        metrics["by_kind"], metrics["n_by_kind"] = kinds, counts
    return Scored(metrics, details)


def references(record: dict) -> list[str]:
    """A record's reference answers: `answers` (a list) or `answer` (one string)."""
    if record.get("answers") is not None:
        answers = record["answers"]
        if isinstance(answers, str) or not isinstance(answers, list) or not answers:
            raise ValueError(f"sample {record.get('id')!r}: `answers` must be a non-empty list of strings")
        return [str(a) for a in answers]
    if record.get("answer") is not None:
        return [str(record["answer"])]
    raise ValueError(f"sample {record.get('id')!r}: no `answers` or `answer` to score against")
