"""Evaluation: the field's metrics, batched evaluation runs, out-of-distribution scores and reports."""

from minillava.eval.data import load_samples
from minillava.eval.ood import Detector, auroc, fit_ood
from minillava.eval.runner import EvalResult, evaluate, evaluate_file
from minillava.eval.tasks import TASKS, Task
from minillava.eval.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "TASKS", "Detector", "EvalResult", "Task", "auroc", "evaluate", "evaluate_file", "fit_ood", "load_samples",
    "normalize_answer", "vqa_accuracy",
]
