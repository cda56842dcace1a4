"""The MM-Vet style judge against a tiny OpenAI-compatible server started here."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minillava.cli import main
from minillava.eval.judge import JudgeConfig, parse_score, score_with_judge


class FakeJudge(BaseHTTPRequestHandler):
    """Scores 1.0 when the answer contains the ground truth, else 0.0; says nothing useful for "mumble"."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        prompt = body["messages"][-1]["content"]
        truth, answer = re.findall(r"Ground truth: (.*?) \| Answer: (.*?) \| Score:$", prompt)[0]
        if answer == "mumble" and body["temperature"] == 0:
            reply = "I cannot tell."  # unparseable on the first try; the retry gets a score
        elif answer == "never":
            reply = "no idea"
        else:
            reply = "1.0" if truth.lower() in answer.lower() else "0.0"
        data = json.dumps({"model": "fake-judge-v1", "choices": [{"message": {"role": "assistant",
                                                                                "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_url():
    FakeJudge.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("reply", "expected"), [
    ("0.7", 0.7), ("Score: 1.0", 1.0), (" 0", 0.0), ("1", 1.0), (".5", 0.5), ("I'd say 0.3.", 0.3),
    ("7", None), ("2.5", None), ("none", None),
])
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def test_judge_scores_and_records_its_identity(judge_url, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    records = [
        {"id": "1", "question": "What colour?", "prediction": "It is red.", "answer": "red"},
        {"id": "2", "question": "How many?", "prediction": "two", "answers": ["3", "three"]},
        {"id": "3", "question": "What?", "prediction": "mumble", "answer": "cat"},
        {"id": "4", "question": "What?", "prediction": "never", "answer": "cat", "kind": "hard"},
    ]
    scored = score_with_judge(records, JudgeConfig(judge_url, "judge-model", attempts=2))
    assert [d["score"] for d in scored.details] == [1.0, 0.0, 0.0, 0.0]
    assert [d["judged"] for d in scored.details] == [True, True, True, False]
    m = scored.metrics
    assert m["score"] == 0.25 and m["unscored"] == 1 and m["by_kind"] == {"hard": 0.0}
    assert m["judge"] == {"url": judge_url, "model": "judge-model", "prompt": "minillava-judge-1",
                          "served_model": ["fake-judge-v1"]}
    first = FakeJudge.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "judge-model"
    assert first["auth"] == "Bearer sk-test"
    assert "3 <OR> three" in FakeJudge.requests[1]["body"]["messages"][0]["content"]
    # "mumble": a second try at a higher temperature; "never": two tries, then unscored
    assert len(FakeJudge.requests) == 1 + 1 + 2 + 2


def test_judge_needs_an_endpoint():
    with pytest.raises(ValueError, match="--judge-url"):
        score_with_judge([{"id": "1", "prediction": "x", "answer": "y"}])


def test_eval_score_cli_with_judge(judge_url, tmp_path, capsys):
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "1", "question": "Q?", "prediction": "a red car", "answer": "car"},
        {"id": "2", "question": "Q?", "prediction": "a bus", "answer": "car"},
    ]) + "\n")
    assert main(["eval", "score", "--task", "judge", "--predictions", str(path), "--judge-url", judge_url,
                 "--judge-model", "m"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == 0.5 and out["judge"]["model"] == "m"
    assert main(["eval", "score", "--task", "judge", "--predictions", str(path)]) == 2
    assert "--judge-url" in capsys.readouterr().err
