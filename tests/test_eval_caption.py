"""Caption metrics on cases small enough to compute by hand: BLEU-4, CIDEr-D, MiniLM similarity."""

from __future__ import annotations

import math

import pytest

from minillava.eval.caption import score_captions
from minillava.eval.ngrams import bleu, cider_d, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A red circle, and TWO squares.") == ["a", "red", "circle", "and", "two", "squares"]


def test_bleu4_by_hand():
    # p1 = 5/6 ("the" twice, clipped to 1), p2 = 3/5, p3 = 2/4, p4 = 1/3; same length: no brevity penalty.
    assert bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx((1 / 12) ** 0.25)
    # All precisions 1; candidate 4 words, reference 6: brevity penalty exp(1 - 6/4).
    assert bleu(["the cat sat on"], [["the cat sat on the mat"]]) == pytest.approx(math.exp(-0.5))
    # The closest reference length counts (4 here), so no penalty.
    assert bleu(["the cat sat on"], [["the cat sat on the mat", "the cat sat on"]]) == pytest.approx(1.0)
    assert bleu(["a dog"], [["the cat sat on the mat"]]) == 0.0  # no matching 4-gram, no smoothing


def test_bleu_is_corpus_level():
    # Counts add up over the corpus: p1 = (2 + 4) / (2 + 4) ... with one 2-word sentence no 3/4-grams exist there.
    cands, refs = ["the cat", "a dog ran far"], [["the cat"], ["a dog ran far"]]
    assert bleu(cands, refs) == pytest.approx(1.0)


def test_cider_d_by_hand():
    # Two images. "a" is in both reference sets: idf 0. Every other n-gram is in one: idf log 2 (= L).
    # Candidate 1 "a cat ran" vs "a cat sat": unigram cosine L^2 / (sqrt(2)L)^2 = 0.5 ("a" weighs 0);
    # bigrams {a cat, cat ran} vs {a cat, cat sat}: 0.5; trigrams 0; no 4-grams: 0. Same length.
    # -> mean over n 0.25, x10 = 2.5. Candidate 2 equals its reference: 1, 1, 1, 0 (3 words) -> 7.5.
    mean, per = cider_d(["a cat ran", "a dog ran"], [["a cat sat"], ["a dog ran"]])
    assert per == pytest.approx([2.5, 7.5])
    assert mean == pytest.approx(5.0)


def test_cider_d_edge_cases():
    # One image: log(1) = 0, so every idf is 0 and so is CIDEr (a known property of the metric).
    assert cider_d(["a cat"], [["a cat"]])[0] == 0.0
    # An exact 4+-word match with n-grams unique to its image scores 10 (x10 of cosine 1 at every order).
    mean, per = cider_d(["one two three four", "five six seven eight"],
                        [["one two three four"], ["five six seven eight"]])
    assert per == pytest.approx([10.0, 10.0])
    # Two references: the mean over references; a second, unrelated reference halves the score.
    _, per = cider_d(["one two three four", "five six seven eight"],
                     [["one two three four", "nine ten eleven twelve"], ["five six seven eight"]])
    assert per[0] == pytest.approx(5.0)
    # Length penalty: 2 extra words (bigram count 5 vs 3) multiply by exp(-4 / 72).
    _, per = cider_d(["one two three four x y", "five six seven eight"],
                     [["one two three four"], ["five six seven eight"]])
    assert per[0] < 10.0 * math.exp(-4 / 72) + 1e-9


def test_caption_scores_with_minilm_similarity():
    records = [
        {"id": "1", "prediction": "A red circle.", "answer": "A red circle."},
        {"id": "2", "prediction": "A small blue square on the left.",
         "answers": ["A blue square.", "Stock prices fell."]},
        {"id": "3", "prediction": "The stock market fell sharply today.", "answer": "A green triangle."},
    ]
    scored = score_captions(records)
    sims = [d["score"] for d in scored.details]
    assert sims[0] == pytest.approx(1.0, abs=1e-4)  # identical text
    assert sims[1] > 0.6 > sims[2]  # a paraphrase of one reference is close; an unrelated sentence is not
    m = scored.metrics
    assert set(m) >= {"similarity", "bleu4", "cider_d", "n"} and m["n"] == 3
    assert m["similarity"] == pytest.approx(sum(sims) / 3)
    assert m["cider_d"] == pytest.approx(sum(d["cider_d"] for d in scored.details) / 3)
