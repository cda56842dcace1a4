"""Caption n-gram metrics: corpus BLEU-4 (Papineni et al.) and CIDEr-D (Vedantam et al., as in coco-caption)."""

from __future__ import annotations

import math
import re
from collections import Counter

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
CIDER_SIGMA = 6.0  # width of CIDEr-D's Gaussian length penalty, in words


def tokenize(text: str) -> list[str]:
    """Lowercase words and numbers; punctuation dropped, as the COCO caption tokenizer does."""
    return _TOKEN.findall(text.lower())


def ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU: clipped n-gram precisions summed over the corpus, geometric mean, brevity penalty against
    the reference length closest to each candidate (the shorter on ties). No smoothing: 0 when any order has
    no match."""
    matched, total = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for candidate, refs in zip(candidates, references, strict=True):
        cand = tokenize(candidate)
        ref_tokens = [tokenize(r) for r in refs]
        cand_len += len(cand)
        ref_len += min((len(r) for r in ref_tokens), key=lambda length: (abs(length - len(cand)), length))
        for n in range(1, max_n + 1):
            counts = ngram_counts(cand, n)
            most = Counter()
            for r in ref_tokens:
                most |= ngram_counts(r, n)  # | keeps the largest count of each n-gram over the references
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += sum(counts.values())
    if cand_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / max_n
    brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def _tfidf(tokens: list[str], idf: dict, unseen_idf: float, max_n: int) -> tuple[list[dict], list[float], int]:
    """Per order: n-gram -> count x idf, the vector norms, and the length (bigram count, as coco-caption)."""
    vectors, norms = [], []
    for n in range(1, max_n + 1):
        vec = {g: c * idf.get(g, unseen_idf) for g, c in ngram_counts(tokens, n).items()}
        vectors.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vectors, norms, max(0, len(tokens) - 1)


def cider_d(candidates: list[str], references: list[list[str]], max_n: int = 4) -> tuple[float, list[float]]:
    """CIDEr-D over a corpus: (mean, per-candidate scores).

    Document frequencies come from each sample's reference set; idf = log(N) - log(max(1, df)). For each
    reference, per order: clipped tf-idf cosine times exp(-(length difference)^2 / (2 sigma^2)); averaged over
    orders and references, times 10. With one sample every idf is 0, so every score is 0.
    """
    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_tokens:
        df.update({g for r in refs for n in range(1, max_n + 1) for g in ngram_counts(r, n)})
    log_n = math.log(max(1, len(references)))
    idf = {g: log_n - math.log(max(1.0, c)) for g, c in df.items()}
    scores = []
    for candidate, refs in zip(candidates, ref_tokens, strict=True):
        cand_vec, cand_norm, cand_len = _tfidf(tokenize(candidate), idf, log_n, max_n)  # unseen n-grams: df counts as 1
        total = 0.0
        for ref in refs:
            ref_vec, ref_norm, ref_len = _tfidf(ref, idf, log_n, max_n)
            penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(max_n):
                dot = sum(min(v, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, v in cand_vec[n].items())
                if cand_norm[n] and ref_norm[n]:
                    total += penalty * dot / (cand_norm[n] * ref_norm[n])
        scores.append(10.0 * total / max_n / max(1, len(refs)))
    return (sum(scores) / len(scores) if scores else 0.0), scores
