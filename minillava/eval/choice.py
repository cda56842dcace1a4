"""Multiple choice in the MMMU / ScienceQA style: options as letters, the reply's first option letter counts."""

from __future__ import annotations

import re
import string

from minillava.eval.scored import Scored, mean, references, with_kinds

PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase

# "The answer is B", "Answer: (C)", "option D", "correct choice is A" name the letter outright.
_NAMED = re.compile(r"\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|=))?\s*[:\-]?\s*\(?([A-Z])\b(?!')")
# A capital letter standing alone: "B", "B.", "(B)", "B)", "[B]".
_ALONE = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
# "A" before a lowercase word is the article ("A cat"), "I" before one the pronoun ("I think").
_WORDLIKE = re.compile(r"\s+[a-z]")


def format_prompt(question: str, choices: list[str]) -> str:
    """"{question}\\nA. ...\\nB. ...\\nAnswer with the option's letter from the given choices directly." """
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"multiple choice needs 2 to {len(LETTERS)} choices, got {len(choices)}")
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question}\n{options}\n{PROMPT_SUFFIX}"


def parse_choice(reply: str, num_choices: int | None = None, choices: list[str] | None = None) -> str | None:
    """The option letter a reply gives, or None.

    The letter named after "answer" / "option" / "choice" wins; else the first capital letter standing alone
    (article "A" and pronoun "I" before a lowercase word do not count); else, when the reply quotes exactly one
    choice's text, that choice.
    """
    if choices is not None:
        num_choices = len(choices)
    valid = LETTERS[: num_choices or len(LETTERS)]
    for match in _NAMED.finditer(reply):
        if match.group(1) in valid:
            return match.group(1)
    for match in _ALONE.finditer(reply):
        letter = match.group(1)
        if letter not in valid:
            continue
        if letter in "AI" and _WORDLIKE.match(reply, match.end()):
            continue
        return letter
    if choices:
        said = reply.lower()
        quoted = [i for i, choice in enumerate(choices) if choice.strip() and choice.strip().lower() in said]
        if len(quoted) == 1:
            return LETTERS[quoted[0]]
    return None


def answer_letter(answer: str, choices: list[str] | None = None) -> str:
    """The reference as a letter: "B", "(B)" or "b" as given, or the text of one of the choices."""
    text = answer.strip()
    bare = text.strip("().:[] ").upper()
    if len(bare) == 1 and bare in LETTERS:
        return bare
    if choices:
        for i, choice in enumerate(choices):
            if choice.strip().lower() == text.lower():
                return LETTERS[i]
    raise ValueError(f"multiple-choice answer {answer!r} is neither an option letter nor one of the choices")


def score_choices(predictions: list[dict]) -> Scored:
    """Accuracy over records with `prediction`, `answer` (a letter or a choice's text) and optional `choices`."""
    details = []
    for record in predictions:
        choices = record.get("choices")
        parsed = parse_choice(record["prediction"], choices=choices)
        details.append({"parsed": parsed, "score": float(parsed == answer_letter(references(record)[0], choices))})
    metrics = {"accuracy": mean([d["score"] for d in details]), "n": len(predictions)}
    return with_kinds(metrics, predictions, details)
