"""The evaluation tasks, by exact name: how each builds its prompt and scores its predictions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from minillava.eval import caption, choice, judge, pope, vqa
from minillava.eval.scored import Scored, references
from minillava.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    headline: str  # the metric a report puts first
    max_new_tokens: int  # enough for the replies the prompt asks for
    build_prompt: Callable[[dict], str]
    scorer: Callable[..., Scored]  # (records, **options) -> Scored
    check_sample: Callable[[dict], None]  # raises ValueError naming what a sample lacks
    # What follows every question (lmms-eval's post_prompt): LLaVA-1.5's short-answer instruction for vqa and
    # pope. A model trained without it is asked without it: `prompt(sample, post_prompt="")`.
    post_prompt: str = ""

    def prompt(self, sample: dict, post_prompt: str | None = None) -> str:
        """The question as the model is asked it; `post_prompt` replaces the task's own (None keeps it)."""
        return _with_suffix(self.build_prompt(sample), self.post_prompt if post_prompt is None else post_prompt)

    def score_records(self, predictions: list[dict], **options) -> Scored:
        """Metrics and per-prediction details; options go to the scorer (judge=... for the judge task)."""
        return self.scorer(predictions, **options)

    def score(self, predictions: list[dict], **options) -> dict:
        return self.score_records(predictions, **options).metrics

    def check(self, sample: dict) -> None:
        """Raise ValueError naming what a sample lacks for this task."""
        self.check_sample(sample)


def _needs_question(sample: dict) -> None:
    if not str(sample.get("question") or "").strip():
        raise ValueError("no `question`")
    references(sample)


def _check_mc(sample: dict) -> None:
    _needs_question(sample)
    choices = sample.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError("a multiple-choice sample needs `choices`, a list of at least 2 options")
    choice.answer_letter(references(sample)[0], [str(c) for c in choices])


def _check_pope(sample: dict) -> None:
    _needs_question(sample)
    pope.label(references(sample)[0])


def _with_suffix(question: str, suffix: str) -> str:
    """The question ending with `suffix`, once: a sample that already carries it is asked as it is."""
    question = question.strip()
    return question if not suffix or question.endswith(suffix.strip()) else question + suffix


TASKS: Registry[Task] = Registry("eval task")
for _task in (
    Task("vqa", "open questions, VQAv2 accuracy", "accuracy", 16,
         lambda s: s["question"].strip(), vqa.score_vqa, _needs_question, vqa.PROMPT_SUFFIX),
    Task("mc", "multiple choice (MMMU / ScienceQA style), accuracy", "accuracy", 8,
         lambda s: choice.format_prompt(s["question"].strip(), [str(c) for c in s["choices"]]),
         choice.score_choices, _check_mc),
    Task("pope", "yes/no object probing (POPE), F1 with yes positive", "f1", 8,
         lambda s: s["question"].strip(), pope.score_pope, _check_pope, pope.PROMPT_SUFFIX),
    Task("caption", "captions: MiniLM similarity, BLEU-4, CIDEr-D", "cider_d", 48,
         lambda s: (s.get("question") or caption.DEFAULT_PROMPT).strip(), caption.score_captions, references),
    Task("judge", "open answers graded 0-1 by a judge model (MM-Vet style)", "score", 128,
         lambda s: s["question"].strip(), judge.score_with_judge, _needs_question),
):
    TASKS.register(_task.name)(_task)


def get_task(name: str) -> Task:
    return TASKS.get(name)
