"""Evaluation runs: batched greedy generation over samples, then the task's scoring."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from minillava.data.conversation import Video
from minillava.eval.data import load_samples, normalize_sample
from minillava.eval.ood import Detector
from minillava.eval.tasks import TASKS, Task
from minillava.model.generation import build_prompt
from minillava.model.sampling import GenerationConfig

PREDICTIONS, METRICS = "predictions.jsonl", "metrics.json"
_NOT_COPIED = ("image", "conversations")  # the image goes in as a path string only; see _record


@dataclass
class EvalResult:
    task: str
    predictions: list[dict]
    metrics: dict

    def save(self, out_dir: str | Path) -> Path:
        """Write predictions.jsonl and metrics.json into out_dir; returns out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / PREDICTIONS, "w", encoding="utf-8") as f:
            for record in self.predictions:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        (out / METRICS).write_text(json.dumps(self.metrics, indent=1, ensure_ascii=False) + "\n")
        return out


def _record(sample: dict, prediction: str) -> dict:
    record = {"id": sample["id"], "question": sample.get("question", ""), "prediction": prediction}
    record |= {k: v for k, v in sample.items() if k not in record and k not in _NOT_COPIED}
    if isinstance(sample.get("image"), str):
        record["image"] = sample["image"]
    return record


def _checked(task: Task, samples: list[dict], image_root: str | Path | None) -> list[dict]:
    root = Path(image_root) if image_root is not None else None
    out = []
    for index, sample in enumerate(samples):
        try:
            sample = normalize_sample(sample, index, root)
            task.check(sample)
        except ValueError as error:
            raise ValueError(f"sample {index} (id {str(sample.get('id', index))!r}): {error}") from None
        out.append(sample)
    return out


def evaluate(model, task: str | Task, samples: list[dict], batch_size: int = 8, max_new_tokens: int | None = None,
             limit: int | None = None, progress: bool = True, image_root: str | Path | None = None,
             detector: Detector | None = None, scoring: dict | None = None,
             post_prompt: str | None = None) -> EvalResult:
    """Answer every sample greedily in batches and score the answers.

    `post_prompt` replaces the text the task appends to every question (vqa and pope: LLaVA-1.5's "Answer the
    question using a single word or phrase."); ask a model the way it was trained: "" if its questions had none.
    `max_new_tokens` defaults to the task's own; `detector` adds each image's `ood_score` (and `ood_flag`);
    `scoring` goes to the task's scorer (the judge task needs `{"judge": JudgeConfig(...)}`). The model is put
    in eval mode for the run and given back in the mode it came in.
    """
    task = TASKS.get(task) if isinstance(task, str) else task
    samples = _checked(task, samples[:limit] if limit is not None else samples, image_root)
    if not samples:
        raise ValueError("no samples to evaluate")
    config = GenerationConfig(max_new_tokens=max_new_tokens or task.max_new_tokens)
    predictions: list[dict] = []
    ood_cache: dict[str, float] = {}  # image path -> score: data sets ask several questions per image
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc=f"eval {task.name}", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for first in range(0, len(samples), batch_size):
            batch = samples[first : first + batch_size]
            images = [[s["image"]] if s.get("image") is not None else [Video(s["video"])] if s.get("video") else []
                      for s in batch]
            prompts = [build_prompt(task.prompt(s, post_prompt), imgs) for s, imgs in zip(batch, images, strict=True)]
            replies = model.generate(prompts, config)
            records = [_record(s, r.text.strip()) for s, r in zip(batch, replies, strict=True)]
            if detector is not None:
                _add_ood(model, detector, batch, records, ood_cache)
            predictions.extend(records)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    scored = task.score_records(predictions, **(scoring or {}))
    for record, detail in zip(predictions, scored.details, strict=True):
        record.update(detail)
    metrics = {"task": task.name, **scored.metrics, "n": len(predictions), "seconds": round(seconds, 2),
               "samples_per_s": round(len(predictions) / seconds, 3) if seconds else None,
               "max_new_tokens": config.max_new_tokens,
               "post_prompt": task.post_prompt if post_prompt is None else post_prompt}
    if detector is not None:
        metrics["ood"] = _ood_summary(detector, predictions)
    return EvalResult(task.name, predictions, metrics)


def _add_ood(model, detector: Detector, batch: list[dict], records: list[dict], cache: dict[str, float]) -> None:
    with_image = [i for i, s in enumerate(batch) if s.get("image") is not None]  # videos get no score
    keys = [batch[i]["image"] if isinstance(batch[i]["image"], str) else None for i in with_image]
    todo = [i for i, key in zip(with_image, keys, strict=True) if key is None or key not in cache]
    fresh = dict(zip(todo, detector.score(model, [batch[i]["image"] for i in todo]), strict=True)) if todo else {}
    for i, key in zip(with_image, keys, strict=True):
        value = fresh[i] if i in fresh else cache[key]
        if key is not None:
            cache[key] = value
        records[i]["ood_score"], records[i]["ood_flag"] = round(value, 4), detector.flags([value])[0]


def _ood_summary(detector: Detector, predictions: list[dict]) -> dict:
    scores = [p["ood_score"] for p in predictions if "ood_score" in p]
    return {"method": detector.method, "threshold": detector.threshold, "n": len(scores),
            "mean_score": sum(scores) / len(scores) if scores else None,
            "flagged": sum(bool(p.get("ood_flag")) for p in predictions)}


def evaluate_file(model, task: str | Task, data: str | Path, image_root: str | Path | None = None,
                  limit: int | None = None, **options) -> EvalResult:
    """`evaluate` on a JSONL / JSON data file (LLaVA-format records work too); options as for `evaluate`."""
    return evaluate(model, task, load_samples(data, image_root, limit), **options)
