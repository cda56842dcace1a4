"""The FastAPI app: /v1/chat/completions (JSON or server-sent events), /v1/models, /health."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from minillava import __version__
from minillava.serve.batcher import Batcher, Delta, Done, Failed, Job, QueueFull, ShuttingDown
from minillava.serve.config import ServeConfig
from minillava.serve.errors import APIError, install_error_handlers
from minillava.serve.prepare import JobBuilder
from minillava.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Usage,
)

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 503)}
BEARER = HTTPBearer(auto_error=False, description="the server's --api-key, when it has one")
DISCONNECT_POLL_S = 1.0  # how often a waiting non-streaming request checks that its client is still there


class BodyLimit:
    """Refuse a request body over the limit from its Content-Length, before reading it (plain ASGI)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                error = APIError(413, f"the request body is {int(length)} bytes, over the limit of {self.limit}",
                                 "request_too_large")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model, config: ServeConfig | None = None) -> FastAPI:
    """An app serving `model` (a loaded MiniLlava); its model worker runs while the app's lifespan does."""
    config = config or ServeConfig()
    batcher = Batcher(model, config.max_batch_size, config.max_queue, config.batch_wait_s)
    builder = JobBuilder(model, config)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # The server has already waited for open requests; what is left was cancelled by its client.
        await asyncio.to_thread(batcher.stop, 5.0)

    app = FastAPI(title="minillava", version=__version__, lifespan=lifespan,
                  description="An OpenAI-compatible chat completions API for a minillava vision-language model.")
    app.state.batcher = batcher
    app.state.config = config
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if config.api_key is None:
            return
        if credentials is None:
            raise APIError(401, "missing API key: send the header Authorization: Bearer <key>", "invalid_api_key")
        if not secrets.compare_digest(credentials.credentials.encode(), config.api_key.encode()):
            raise APIError(401, "incorrect API key", "invalid_api_key")

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        stats = batcher.stats
        body = Health(status="shutting down" if batcher.closing else "ok", queued=batcher.queued,
                      running=batcher.running, completed=stats["completed"], cancelled=stats["cancelled"],
                      failed=stats["failed"], batches=stats["batches"],
                      mean_batch_size=stats["rows"] / max(1, stats["batches"]))
        return JSONResponse(body.model_dump(), status_code=503 if batcher.closing else 200)

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS, dependencies=[Depends(authorize)])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=config.model_name, created=started, max_model_len=builder.max_model_len)])

    @app.post("/v1/chat/completions", response_model=ChatCompletion, dependencies=[Depends(authorize)],
              responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                         "description": "a ChatCompletion, or with stream=true ChatCompletionChunk "
                                                        "events"}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.model is not None and body.model != config.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {config.model_name!r}",
                           "model_not_found", "model")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def deliver(event) -> None:  # called from the model worker thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            if batcher.queued >= batcher.max_queue:  # refuse before fetching images and tokenizing
                raise QueueFull(f"{batcher.queued} requests are waiting already; try again later")
            with batcher.preparing():
                job = await run_in_threadpool(builder.build, body, deliver)
                batcher.submit(job)
        except QueueFull as err:
            raise APIError(429, str(err), "queue_full") from None
        except ShuttingDown as err:
            raise APIError(503, str(err), "shutting_down") from None
        reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), config.model_name, job)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(reply.events(events, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await reply.complete(events, request)

    return app


def sse(data: dict) -> str:
    """One server-sent event carrying compact JSON."""
    return "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


class Reply:
    """One request's answer, assembled from the worker's events as a ChatCompletion or as SSE chunks."""

    def __init__(self, reply_id: str, created: int, model: str, job: Job):
        self.id = reply_id
        self.created = created
        self.model = model
        self.job = job

    def usage(self, done: Done) -> Usage:
        prompt = self.job.prompt_tokens
        return Usage(prompt_tokens=prompt, completion_tokens=done.completion_tokens,
                     total_tokens=prompt + done.completion_tokens)

    async def complete(self, events: asyncio.Queue, request: Request) -> JSONResponse:
        parts: list[str] = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)  # nobody reads it; the finally cancels the job
                    continue
                if isinstance(event, Delta):
                    parts.append(event.text)
                elif isinstance(event, Failed):
                    raise APIError(event.status, event.message, "generation_failed")
                else:
                    choice = Choice(message=AssistantMessage(content="".join(parts)), finish_reason=event.finish_reason)
                    completion = ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice],
                                                usage=self.usage(event))
                    return JSONResponse(completion.model_dump(mode="json"))
        finally:
            self.job.cancel()  # a no-op once the job is done

    def chunk(self, choices: list[ChunkChoice], usage: Usage | None, include_usage: bool) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        data = chunk.model_dump(mode="json", exclude=None if include_usage else {"usage"})
        for choice in data["choices"]:  # deltas carry only what changed: {"content": "..."}, or {} at the end
            choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
        return sse(data)

    async def events(self, events: asyncio.Queue, include_usage: bool) -> AsyncIterator[str]:
        """SSE as OpenAI sends it: the role, content deltas, the finish reason, usage if asked, [DONE]."""
        try:
            yield self.chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))], None, include_usage)
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    yield self.chunk([ChunkChoice(delta=ChunkDelta(content=event.text))], None, include_usage)
                elif isinstance(event, Failed):
                    error = APIError(event.status, event.message, "generation_failed")
                    yield sse(error.body())
                    break
                else:
                    last = ChunkChoice(delta=ChunkDelta(), finish_reason=event.finish_reason)
                    yield self.chunk([last], None, include_usage)
                    if include_usage:
                        yield self.chunk([], self.usage(event), include_usage)
                    break
            yield "data: [DONE]\n\n"
        finally:
            self.job.cancel()  # the client went away (or the reply is complete, then a no-op)
