"""Where the web UI's replies come from: a running `minillava serve` (any OpenAI-compatible server) or a
model in this process. Both take OpenAI-style messages and return a Reply that streams text deltas.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0


class BackendError(RuntimeError):
    """The server or the model refused or failed a request; the message says why."""


class Reply:
    """Iterate for the text deltas; afterwards `text`, `finish_reason` and `usage` are set."""

    def __init__(self, produce: Callable[[Reply], Iterator[str]]):
        self._produce = produce
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: dict | None = None  # prompt_tokens, completion_tokens, total_tokens

    def __iter__(self) -> Iterator[str]:
        for delta in self._produce(self):
            self.text += delta
            yield delta

    def summary(self) -> str:
        tokens = f"{self.usage['prompt_tokens']} prompt + {self.usage['completion_tokens']} reply tokens" \
            if self.usage else ""
        return " · ".join(part for part in (tokens, f"finish: {self.finish_reason}") if part)


class RemoteChat:
    """An OpenAI-compatible server at `base_url` (e.g. http://127.0.0.1:8000/v1), streamed over SSE."""

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.timeout_s = timeout_s

    def models(self) -> list[str]:
        import httpx

        try:
            response = httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=10)
        except httpx.HTTPError as err:
            raise BackendError(f"cannot reach {self.base_url}: {err}") from None
        _raise_for_error(response.status_code, response.text)
        return [card["id"] for card in response.json()["data"]]

    def stream(self, messages: list[dict], settings: Settings) -> Reply:
        import httpx

        def produce(reply: Reply) -> Iterator[str]:
            body = {"model": self.model or self.models()[0], "messages": messages, "stream": True,
                    "stream_options": {"include_usage": True}, "max_tokens": settings.max_tokens,
                    "temperature": settings.temperature, "top_p": settings.top_p}
            timeout = httpx.Timeout(self.timeout_s, connect=10)
            try:
                with httpx.stream("POST", f"{self.base_url}/chat/completions", json=body, headers=self.headers,
                                  timeout=timeout) as response:
                    if response.status_code != 200:
                        _raise_for_error(response.status_code, response.read().decode(errors="replace"))
                    yield from _read_events(response.iter_lines(), reply)
            except httpx.HTTPError as err:
                raise BackendError(f"{self.base_url}: {err}") from None

        return Reply(produce)


def _read_events(lines: Iterator[str], reply: Reply) -> Iterator[str]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise BackendError(event["error"].get("message", "the server failed"))
        for choice in event.get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                yield content
            reply.finish_reason = choice.get("finish_reason") or reply.finish_reason
        reply.usage = event.get("usage") or reply.usage


def _raise_for_error(status: int, text: str) -> None:
    if status == 200:
        return
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:300]
    raise BackendError(f"HTTP {status}: {message}")


class LocalChat:
    """A model in this process; requests take turns (one model, one generation at a time)."""

    def __init__(self, model, max_images: int = 8, max_videos: int = 2):
        self.model = model
        self.max_images = max_images
        self.max_videos = max_videos
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: str = "float32") -> LocalChat:
        import torch

        from minillava.model import MiniLlava

        return cls(MiniLlava.from_pretrained(folder, dtype=getattr(torch, dtype)).eval())

    def stream(self, messages: list[dict], settings: Settings) -> Reply:
        from minillava.data.conversation import Video
        from minillava.data.images import ImageError
        from minillava.model import GenerationConfig
        from minillava.serve.config import ServeConfig
        from minillava.serve.convert import to_conversation
        from minillava.serve.errors import APIError
        from minillava.serve.media import read_image_url, read_video_url
        from minillava.serve.schemas import Message

        data_urls_only = ServeConfig()  # what the UI sends: images and videos inline as data URLs
        try:
            conversation = to_conversation([Message.model_validate(m) for m in messages],
                                           lambda url, param: read_image_url(url, data_urls_only, param),
                                           self.max_images,
                                           lambda url, param: Video(read_video_url(url, data_urls_only, param)),
                                           self.max_videos)
            for media in conversation.images:
                self.model.encoder.plan_image(media)
        except APIError as err:
            raise BackendError(err.message) from None
        except ImageError as err:
            raise BackendError(str(err)) from None
        config = GenerationConfig(max_new_tokens=settings.max_tokens, temperature=settings.temperature,
                                  top_p=settings.top_p)

        def produce(reply: Reply) -> Iterator[str]:
            with self._lock:
                run = self.model.stream([conversation], config)
                for deltas in run:
                    if deltas[0]:
                        yield deltas[0]
            result = run.results[0]
            reply.finish_reason = result.finish_reason
            reply.usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": len(result.token_ids),
                           "total_tokens": result.prompt_tokens + len(result.token_ids)}

        return Reply(produce)
