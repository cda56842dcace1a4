"""Caption scoring: embedding similarity to the references, BLEU-4 and CIDEr-D."""

from __future__ import annotations

from minillava.eval.embedding import best_similarity
from minillava.eval.ngrams import bleu, cider_d
from minillava.eval.scored import Scored, mean, references, with_kinds

DEFAULT_PROMPT = "Describe the image briefly."


def score_captions(predictions: list[dict], similarity: bool = True) -> Scored:
    """similarity (mean best cosine, all-MiniLM-L6-v2), bleu4 and cider_d (corpus level, x10 scale as COCO)."""
    candidates = [r["prediction"] for r in predictions]
    refs = [references(r) for r in predictions]
    cider, per_sample = cider_d(candidates, refs)
    metrics = {"bleu4": bleu(candidates, refs), "cider_d": cider, "n": len(predictions)}
    if similarity and predictions:
        sims = best_similarity(candidates, refs)
        metrics["similarity"] = mean(sims)
        details = [{"score": s, "cider_d": c} for s, c in zip(sims, per_sample, strict=True)]
    else:
        details = [{"score": c, "cider_d": c} for c in per_sample]
    return with_kinds(metrics, predictions, details)
