"""VQAv2 accuracy with the official answer normalisation (the rules of the VQA challenge's evaluation script)."""

from __future__ import annotations

import re
from itertools import combinations

from minillava.eval.scored import Scored, mean, references, with_kinds

PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."

# Punctuation the official rules delete (or turn into a space); the period has its own rule below.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
# A period goes unless a digit follows it ("3.5" keeps it, "1." and "u.s." lose it), as the official script does.
PERIOD = re.compile(r"\.(?!\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions restored when a word is written without (some of) its apostrophes: "dont" -> "don't".
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't mightn't've might've mustn't must've needn't
not've o'clock oughtn't 'ow's'at shan't she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've
somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll
something's that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't
we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's
who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll
you're you've
""".split()
# Bare forms that are words in their own right stay as written.
_REAL_WORDS = frozenset({"hell", "well", "were", "wed", "shed", "shell", "its", "id", "ill", "whore", "lets"})


def _without_apostrophes(word: str) -> set[str]:
    """Every spelling of `word` with at least one of its apostrophes left out."""
    spots = [i for i, ch in enumerate(word) if ch == "'"]
    variants = set()
    for k in range(1, len(spots) + 1):
        for dropped in combinations(spots, k):
            variants.add("".join(ch for i, ch in enumerate(word) if i not in dropped))
    return variants


CONTRACTIONS: dict[str, str] = {
    variant: word for word in _CONTRACTED for variant in _without_apostrophes(word) if variant not in _REAL_WORDS
}


def _punctuation(text: str) -> str:
    # The official rule: a mark next to a space (or any mark in a text with a digit-comma-digit) is deleted,
    # otherwise it becomes a space, so "black-and-white" reads "black and white" and "2,000" reads "2000".
    out = text
    delete_all = DIGIT_COMMA.search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The official VQA normalisation: punctuation, lowercase, number words to digits, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction.

    With 10 or more human answers: the mean, over leaving each answer out, of min(1, matches among the rest / 3).
    With fewer: 1.0 when the prediction equals any reference after normalisation, else 0.0.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    predicted = normalize_answer(prediction)
    references = [normalize_answer(a) for a in answers]
    if len(references) < 10:
        return float(predicted in references)
    matches = sum(r == predicted for r in references)
    # Leaving out a matching answer leaves matches - 1 among the rest; leaving out any other leaves matches.
    total = sum(min(1.0, (matches - (r == predicted)) / 3) for r in references)
    return total / len(references)


def score_vqa(predictions: list[dict]) -> Scored:
    """Mean VQA accuracy over records with `prediction` and `answers` / `answer`; by_kind when records have kinds."""
    details = [{"score": vqa_accuracy(r["prediction"], references(r))} for r in predictions]
    metrics = {"accuracy": mean([d["score"] for d in details]), "n": len(predictions)}
    return with_kinds(metrics, predictions, details)
