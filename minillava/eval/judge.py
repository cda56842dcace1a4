"""MM-Vet style scoring: a judge model behind any OpenAI-compatible endpoint grades each answer 0.0-1.0."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import httpx

from minillava.eval.scored import Scored, mean, references, with_kinds

log = logging.getLogger(__name__)
PROMPT_VERSION = "minillava-judge-1"

INSTRUCTIONS = """You grade answers to questions about images. Compare the model's answer with the ground truth and \
give a correctness score: 0.0 (entirely wrong), 0.1, 0.2, ..., 0.9, or 1.0 (entirely right). In the ground truth, \
<AND> joins parts that must all appear for full marks and <OR> joins alternatives of which any one is enough. \
Partly right answers get partial credit. Reply with the score only.

Examples:
Question: What colour is the car? | Ground truth: red | Answer: The car is red. | Score: 1.0
Question: How many dogs are there? | Ground truth: 3 | Answer: two | Score: 0.0
Question: What is on the table? | Ground truth: cup <AND> plate | Answer: a cup | Score: 0.5
Question: Where is this? | Ground truth: beach <OR> seaside | Answer: at the seaside | Score: 1.0
"""
_NUMBER = re.compile(r"(?<![\d.])(?:1(?:\.0+)?|0(?:\.\d+)?|\.\d+)(?!\d|\.\d)")


@dataclass
class JudgeConfig:
    url: str  # the endpoint's base URL as OpenAI clients take it, e.g. http://localhost:8000/v1
    model: str
    api_key: str | None = None  # default: $OPENAI_API_KEY; never written to any output
    timeout: float = 60.0
    attempts: int = 3  # tries per answer while the reply holds no score

    def identity(self) -> dict:
        return {"url": self.url, "model": self.model, "prompt": PROMPT_VERSION}


def judge_prompt(question: str, reference: str, answer: str) -> str:
    return f"{INSTRUCTIONS}\nQuestion: {question} | Ground truth: {reference} | Answer: {answer} | Score:"


def parse_score(reply: str) -> float | None:
    """The first number in [0, 1] in the judge's reply."""
    match = _NUMBER.search(reply)
    return float(match.group(0)) if match else None


class Judge:
    def __init__(self, config: JudgeConfig, client: httpx.Client | None = None):
        self.config = config
        key = config.api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(timeout=config.timeout, headers=headers)
        self.served_models: set[str] = set()

    def grade(self, question: str, reference: str, answer: str) -> tuple[float | None, str]:
        """(score or None when no attempt gave one, the judge's last reply)."""
        url = self.config.url.rstrip("/") + "/chat/completions"
        reply = ""
        for attempt in range(self.config.attempts):
            body = {"model": self.config.model, "max_tokens": 8, "temperature": 0.2 * attempt,
                    "messages": [{"role": "user", "content": judge_prompt(question, reference, answer)}]}
            response = self.client.post(url, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"judge {url} answered HTTP {response.status_code}: {response.text[:200]}")
            data = response.json()
            self.served_models.add(str(data.get("model", self.config.model)))
            reply = data["choices"][0]["message"]["content"] or ""
            score = parse_score(reply)
            if score is not None:
                return score, reply
        log.warning("judge gave no score for %r after %d tries: %r", question[:60], self.config.attempts, reply)
        return None, reply


def score_with_judge(predictions: list[dict], judge: Judge | JudgeConfig | None = None) -> Scored:
    """Mean judge score (unscored answers count 0.0); the judge's identity goes into the metrics."""
    if judge is None:
        raise ValueError("the judge task needs a judge: pass --judge-url and --judge-model")
    if isinstance(judge, JudgeConfig):
        judge = Judge(judge)
    details = []
    for record in predictions:
        reference = " <OR> ".join(references(record))
        score, reply = judge.grade(str(record.get("question", "")), reference, record["prediction"])
        details.append({"score": score if score is not None else 0.0, "judge_reply": reply,
                        "judged": score is not None})
    identity = judge.config.identity() | {"served_model": sorted(judge.served_models)}
    metrics = {"score": mean([d["score"] for d in details]), "n": len(predictions),
               "unscored": sum(not d["judged"] for d in details), "judge": identity}
    return with_kinds(metrics, predictions, details)
