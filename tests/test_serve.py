"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn server."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from PIL import Image

from minillava.data.conversation import Conversation, Turn
from minillava.model import GenerationConfig, MiniLlava, build_prompt
from minillava.serve import BackgroundServer, ServeConfig, create_app

KEY = "secret-key"
QUESTION = "What colour is it?"


def varied(model: MiniLlava) -> MiniLlava:
    """Re-initialise the tiny LM with larger weights, so that greedy replies differ by prompt and image."""
    torch.manual_seed(0)
    for weight in model.language_model.parameters():
        torch.nn.init.normal_(weight, std=0.2)
    return model.eval()


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def image_message(url: str, text: str = QUESTION) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": text}]}


def greedy(model: MiniLlava, conversation: Conversation, max_new_tokens: int, **options):
    config = GenerationConfig(max_new_tokens=max_new_tokens, **options)
    return model.generate([conversation], config)[0]


@pytest.fixture(scope="module")
def model(tiny_towers, tiny_llms) -> MiniLlava:
    return varied(MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]))


@pytest.fixture(scope="module")
def media(tmp_path_factory, images):
    """A folder the server may read, with an image, a symlink out of it, and an image beside it outside."""
    root = tmp_path_factory.mktemp("media")
    inside = root / "allowed"
    inside.mkdir()
    images[0].save(inside / "red.png")
    images[2].save(root / "outside.png")
    (inside / "escape.png").symlink_to(root / "outside.png")
    return inside


@pytest.fixture(scope="module")
def server(model, media):
    config = ServeConfig(model_name="tiny", api_key=KEY, allowed_local_media_path=media, max_images_per_prompt=2,
                         max_image_bytes=50_000, max_image_pixels=100_000, max_videos_per_prompt=0,
                         max_batch_size=8, batch_wait_s=0.02)
    with BackgroundServer(create_app(model, config)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def post(server, body, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, dict | list):
        kwargs["json"] = body
    else:
        kwargs["content"] = body
        headers["Content-Type"] = "application/json"
    return httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=30, **kwargs)


def test_models_health_and_openapi(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{server.url}/health").json()  # no key needed
    assert health["status"] == "ok"
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])
    assert "ChatCompletionRequest" in spec["components"]["schemas"]


def test_image_as_data_url_answers_as_generate(client, model, images):
    response = client.chat.completions.create(model="tiny", messages=[image_message(data_url(images[0]))],
                                              max_tokens=9, temperature=0)
    expected = greedy(model, build_prompt(QUESTION, [images[0]]), 9)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason == "length"
    assert response.usage.prompt_tokens == expected.prompt_tokens  # the image's 16 slots included
    assert response.usage.prompt_tokens > model.tokens_per_image
    assert response.usage.completion_tokens == len(expected.token_ids) == 9
    assert response.usage.total_tokens == expected.prompt_tokens + 9


def test_the_image_changes_the_answer(client, images):
    answers = {client.chat.completions.create(model="tiny", messages=[image_message(data_url(image))],
                                              max_tokens=6, temperature=0).choices[0].message.content
               for image in images[:2]}
    assert len(answers) == 2


def test_streaming_events_are_openai_shaped(server, model, images):
    body = {"model": "tiny", "messages": [image_message(data_url(images[1]))], "max_tokens": 7, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    expected = greedy(model, build_prompt(QUESTION, [images[1]]), 7)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    content = [c["choices"][0]["delta"] for c in chunks[1:-2]]
    assert "".join(d["content"] for d in content) == expected.text
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": 7,
                                   "total_tokens": expected.prompt_tokens + 7}
    assert all(c["usage"] is None for c in chunks[:-1])


def test_streaming_with_the_openai_client(client, model):
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell a story."}],
                                            max_completion_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    expected = greedy(model, build_prompt("Tell a story."), 8)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # usage only when asked for


def test_multi_turn_with_an_image_in_an_earlier_turn(client, model, images):
    messages = [{"role": "system", "content": "Be brief."}, image_message(data_url(images[0]), "Describe it."),
                {"role": "assistant", "content": "A red box."}, {"role": "user", "content": "And its size?"}]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    conversation = Conversation([Turn("system", "Be brief."), Turn("user", "<image>\nDescribe it."),
                                 Turn("assistant", "A red box."), Turn("user", "And its size?")], images=[images[0]])
    expected = greedy(model, conversation, 6)
    assert response.choices[0].message.content == expected.text
    assert response.usage.prompt_tokens == expected.prompt_tokens


def test_stop_strings_and_seeds(client, model):
    prompt = build_prompt("Name a colour.")
    full = greedy(model, prompt, 10).text
    stop = full.split()[2]
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}],
                                              max_tokens=10, temperature=0, stop=[stop])
    assert response.choices[0].message.content == full[:full.index(stop)]
    assert response.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}],
                                              max_tokens=8, temperature=1.0, seed=7).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] == sampled[1] == greedy(model, prompt, 8, temperature=1.0, seed=7).text


def test_local_files_only_inside_the_allowed_folder(server, client, model, media, images):
    expected = greedy(model, build_prompt(QUESTION, [images[0]]), 5).text
    for url in (str(media / "red.png"), (media / "red.png").as_uri(), "red.png"):
        response = client.chat.completions.create(model="tiny", messages=[image_message(url)], max_tokens=5,
                                                  temperature=0)
        assert response.choices[0].message.content == expected
    for url, code in ((str(media / ".." / "outside.png"), "image_path_not_allowed"),
                      ("../outside.png", "image_path_not_allowed"),
                      (str(media / "escape.png"), "image_path_not_allowed"),  # a symlink pointing out
                      ("/etc/passwd", "image_path_not_allowed"),
                      ("missing.png", "image_not_found")):
        response = post(server, {"model": "tiny", "messages": [image_message(url)], "max_tokens": 2})
        assert response.status_code == 400, url
        assert response.json()["error"]["code"] == code


def noise_png(size: int) -> Image.Image:
    return Image.frombytes("RGB", (size, size), torch.randint(0, 256, (size * size * 3,), dtype=torch.uint8,
                                                              generator=torch.Generator().manual_seed(0)).numpy())


def user(content) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


MALFORMED = [
    ("not json", b"{not json", 400, "invalid_json"),
    ("json array", b"[1, 2]", 400, "invalid_value"),
    ("json null", b"null", 400, "invalid_value"),
    ("no messages", {"model": "tiny"}, 400, "invalid_value"),
    ("empty messages", {"model": "tiny", "messages": []}, 400, "invalid_value"),
    ("tool role", {"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_value"),
    ("user without content", {"model": "tiny", "messages": [{"role": "user"}]}, 400, "invalid_value"),
    ("unknown part", user([{"type": "input_audio", "input_audio": {}}]), 400, "invalid_value"),
    ("text part without text", user([{"type": "text"}]), 400, "invalid_value"),
    ("content a number", user(5), 400, "invalid_value"),
    ("max_tokens 0", {**user("hi"), "max_tokens": 0}, 400, "invalid_value"),
    ("max_tokens a word", {**user("hi"), "max_tokens": "many"}, 400, "invalid_value"),
    ("max_tokens past the context", {**user("hi"), "max_tokens": 10**9}, 400, "context_length_exceeded"),
    ("temperature 5", {**user("hi"), "temperature": 5}, 400, "invalid_value"),
    ("top_p 0", {**user("hi"), "top_p": 0}, 400, "invalid_value"),
    ("negative seed", {**user("hi"), "seed": -1}, 400, "invalid_value"),
    ("stop not strings", {**user("hi"), "stop": [1, 2]}, 400, "invalid_value"),
    ("nine stop strings", {**user("hi"), "stop": ["a"] * 9}, 400, "invalid_value"),
    ("n 2", {**user("hi"), "n": 2}, 400, "invalid_value"),
    ("frequency penalty", {**user("hi"), "frequency_penalty": 0.5}, 400, "invalid_value"),
    ("placeholder in text", user("look: <image>"), 400, "invalid_value"),
    ("unknown model", {**user("hi"), "model": "gpt-4o"}, 404, "model_not_found"),
    ("data URL not base64", user([image_part("data:image/png;base64,@@@@")]), 400, "invalid_image_url"),
    ("data URL without base64", user([image_part("data:image/png,abc")]), 400, "invalid_image_url"),
    ("data URL of text", user([image_part("data:text/plain;base64,aGVsbG8=")]), 400, "invalid_image_url"),
    ("data URL not an image", user([image_part("data:image/png;base64,aGVsbG8gd29ybGQ=")]), 400, "invalid_image"),
    ("ftp URL", user([image_part("ftp://example.com/a.png")]), 400, "invalid_image_url"),
    ("remote URL not allowed", user([image_part("http://127.0.0.1:9/a.png")]), 400, "remote_images_not_allowed"),
    ("image in an assistant turn", {"model": "tiny", "messages": [
        {"role": "assistant", "content": [image_part("red.png")]}]}, 400, "invalid_value"),
]


@pytest.mark.parametrize(("body", "status", "code"), [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_requests_get_openai_errors(server, body, status, code):
    response = post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    if error["param"]:  # the message names what was wrong
        assert error["param"].split(".")[0] in error["message"]


def test_image_limits(server, images):
    small = data_url(images[0])
    cases = [([image_part(small)] * 3, 400, "too_many_images"),
             ([image_part(data_url(noise_png(150)))], 413, "image_too_large"),  # ~67 kB over 50 kB
             ([image_part(data_url(Image.new("RGB", (400, 400))))], 413, "image_too_large")]  # 160k pixels
    for content, status, code in cases:
        response = post(server, user(content + [{"type": "text", "text": "hi"}]))
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert post(server, b"x" * (9 * 1024 * 1024)).status_code == 413  # the body limit, before parsing


def test_api_key(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    response = post(server, user("hi"), key=None)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_errors_reach_the_openai_client_as_exceptions(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=3)
    assert caught.value.status_code == 400
    assert "n=1" in caught.value.message


def test_concurrent_requests_batch_and_answer_as_one_by_one(server, client, model, images):
    prompts = [(f"Question number {i}?", [images[i % 3]] if i % 2 else [], 3 + i % 5) for i in range(12)]

    def ask(prompt):
        text, imgs, max_tokens = prompt
        content = [*(image_part(data_url(img)) for img in imgs), {"type": "text", "text": text}]
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                              max_tokens=max_tokens, temperature=0)

    before = httpx.get(f"{server.url}/health").json()
    with ThreadPoolExecutor(len(prompts)) as pool:
        responses = list(pool.map(ask, prompts))
    after = httpx.get(f"{server.url}/health").json()
    for (text, imgs, max_tokens), response in zip(prompts, responses, strict=True):
        expected = greedy(model, build_prompt(text, imgs), max_tokens)
        assert response.choices[0].message.content == expected.text
        assert response.usage.completion_tokens == len(expected.token_ids)
    assert after["completed"] - before["completed"] == len(prompts)
    assert after["batches"] - before["batches"] < len(prompts)  # some requests shared a forward pass


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_full_queue_429_and_a_gone_client_is_cancelled(model):
    app = create_app(model, ServeConfig(model_name="tiny", max_queue=1, max_batch_size=1))
    stats = app.state.batcher.stats
    long = {"model": "tiny", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 1500,
            "temperature": 0, "stream": True}
    with BackgroundServer(app) as running, httpx.Client(timeout=30) as http:
        url = f"{running.url}/v1/chat/completions"
        with http.stream("POST", url, json=long) as first:  # runs
            lines = first.iter_lines()  # kept: a dropped httpx line iterator closes the connection
            for line in lines:
                if '"content":"' in line and '"role"' not in line:
                    break
            with http.stream("POST", url, json=long) as second:  # waits in the queue
                assert second.status_code == 200
                third = http.post(url, json={**long, "stream": False})
                assert third.status_code == 429
                assert third.json()["error"]["code"] == "queue_full"
        # Both clients hung up: the running one ends at its next token, the waiting one never runs.
        wait_for(lambda: stats["cancelled"] == 2, "the cancellations")
        done = http.post(url, json={**long, "stream": False, "max_tokens": 3})
        assert done.status_code == 200
        assert done.json()["usage"]["completion_tokens"] == 3
    assert stats["completed"] == 1 and stats["batches"] == 2


def test_graceful_shutdown_finishes_running_streams(model):
    app = create_app(model, ServeConfig(model_name="tiny"))
    server = BackgroundServer(app).start()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Count."}], "max_tokens": 40,
            "temperature": 0, "stream": True}
    received: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        received.append(next(lines))  # the role chunk: the request is in
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        received += list(lines)
    stopper.join()
    data = [line for line in received if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert json.loads(data[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
    assert app.state.batcher.closing
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


def test_the_serve_command_serves_and_stops_on_sigterm(model, tmp_path):
    model.config.stored = ["projector", "language_model"]  # the re-initialised LM goes into the folder
    model.save_pretrained(tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "minillava", "serve", "--model", str(tmp_path / "model"),
                                "--port", str(port), "--served-model-name", "cli"],
                               env={**os.environ, "MINILLAVA_API_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, "the server", timeout_s=120)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        response = client.chat.completions.create(model="cli", messages=[{"role": "user", "content": "Hi."}],
                                                  max_tokens=5, temperature=0)
        assert response.choices[0].message.content == greedy(model, build_prompt("Hi."), 5).text
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        assert "model worker stopped" in (tmp_path / "serve.log").read_text()  # the lifespan's clean stop
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
