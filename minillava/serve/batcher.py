"""Dynamic batching: one model worker thread runs waiting requests together as one left-padded batch.

Requests wait in a bounded queue. The worker takes the oldest, waits a moment for others with the same batch
key (sampling settings that apply to a whole batch) up to the batch size, a little longer while requests are
still being prepared on their threads, and generates them together. Each row's text goes to its own request
as soon as it is decoded; a row ends at its own token limit, on its client's cancellation, or when the batch
ends, whichever comes first, so a slow or gone client never holds up the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from minillava.data.collate import collate
from minillava.data.image_plan import ImagePlan
from minillava.model.generation import GenerationRun
from minillava.model.sampling import GenerationConfig

log = logging.getLogger(__name__)


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    finish_reason: str  # "stop" or "length"
    completion_tokens: int


@dataclass
class Failed:
    status: int  # 503: the server is shutting down; 500: the model failed
    message: str


Event = Delta | Done | Failed


@dataclass(eq=False)
class Job:
    """One request's prompt, ready for the model, and where its events go."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None  # (views of its images, 3, H, W) or None
    config: GenerationConfig  # its max_new_tokens is this request's own limit
    key: Hashable  # jobs with equal keys may share a batch
    deliver: Callable[[Event], None]  # called from the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    image_plans: list[ImagePlan] | None = None  # one per image; None: each view is one image of the fixed size

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def cancel(self) -> None:
        self.cancelled.set()


class QueueFull(RuntimeError):
    pass


class ShuttingDown(RuntimeError):
    pass


def end_row(run: GenerationRun, index: int, reason: str) -> str:
    """End one row of a running batch early; returns the text it still held back.

    The run stops feeding a row once its finish_reason is set (its later tokens become masked padding).
    """
    row = run.rows[index]
    text = run.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    delta = text[len(row.shown):] if text.startswith(row.shown) else ""
    row.shown += delta
    row.finish_reason = reason
    return delta


class Batcher:
    def __init__(self, model, max_batch_size: int = 16, max_queue: int = 128, wait_s: float = 0.01,
                 max_prepare_wait_s: float = 0.25):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.wait_s = wait_s
        self.max_prepare_wait_s = max(wait_s, max_prepare_wait_s)
        self._preparing = 0
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = 0
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "batches": 0, "rows": 0}

    # -- the request side ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="minillava-model", daemon=True)
        self._thread.start()

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Mark a request being prepared (images, tokens): the worker may wait a little longer to batch it."""
        with self._cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self.closing:  # jobs submitted before start() wait for the worker
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.max_queue:  # make room first where waiting clients have gone
                self._queue = deque(j for j in self._queue if not j.cancelled.is_set())
                self.stats["cancelled"] += self.max_queue - len(self._queue)
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting already; try again later")
            self._queue.append(job)
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing or (self._thread is not None and not self._thread.is_alive())

    def stop(self, grace_s: float = 0.0) -> None:
        """Take no new requests, let the waiting and running ones finish for up to grace_s, cancel the rest."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(grace_s)
        if self._thread is None or self._thread.is_alive():
            self._abort.set()
            with self._cond:
                while self._queue:
                    self._fail(self._queue.popleft(), Failed(503, "the server shut down before this request ran"))
            if self._thread is not None:
                self._thread.join()
        log.info("model worker stopped: %s", self.stats)

    # -- the worker ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while (jobs := self._collect()) is not None:
            self._run(jobs)

    def _collect(self) -> list[Job] | None:
        with self._cond:
            while True:
                while self._queue and self._queue[0].cancelled.is_set():
                    self._queue.popleft()
                    self.stats["cancelled"] += 1
                if self._queue:
                    break
                if self._closing:
                    return None
                self._cond.wait()
            group = [self._queue.popleft()]
            start = time.monotonic()
            while True:
                self._take_matching(group)
                # Wait the short window; longer (up to the cap) while requests are still being prepared, as
                # when a batch has just ended and its clients are sending their next requests.
                waited = time.monotonic() - start
                limit = self.max_prepare_wait_s if self._preparing else self.wait_s
                if len(group) >= self.max_batch_size or waited >= limit or self._closing:
                    break
                self._cond.wait(limit - waited)
            self.running = len(group)
            return group

    def _take_matching(self, group: list[Job]) -> None:
        key, kept = group[0].key, deque()
        while self._queue:
            job = self._queue.popleft()
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
            elif job.key == key and len(group) < self.max_batch_size:
                group.append(job)
            else:
                kept.append(job)
        self._queue = kept

    def _run(self, jobs: list[Job]) -> None:
        open_rows = set(range(len(jobs)))
        try:
            plans = None if any(j.image_plans is None for j in jobs) else [j.image_plans for j in jobs]
            batch = collate([j.input_ids for j in jobs], None, self.model.tokenizer.pad_token_id,
                            [j.pixel_values for j in jobs], left_pad=True, image_plans=plans)
            config = replace(jobs[0].config, max_new_tokens=max(j.config.max_new_tokens for j in jobs))
            run = GenerationRun(self.model, batch, config)
            self.stats["batches"] += 1
            self.stats["rows"] += len(jobs)
            for deltas in run:
                for i in sorted(open_rows):
                    if self._step(run, i, jobs[i], deltas[i]):
                        open_rows.discard(i)
                if not open_rows:
                    break
            for i in open_rows:  # the run ended at its own limit: every row is finished
                self._finish(jobs[i], run.rows[i].finish_reason or "length", len(run.rows[i].token_ids))
            open_rows.clear()
        except Exception as err:  # the model failed: tell the waiting clients, keep serving
            log.exception("generation failed for a batch of %d", len(jobs))
            for i in open_rows:
                self._fail(jobs[i], Failed(500, f"generation failed: {type(err).__name__}: {err}"))
        finally:
            with self._cond:
                self.running = 0

    def _step(self, run: GenerationRun, i: int, job: Job, text: str) -> bool:
        """Deliver row i's new text; True once the row is finished."""
        row = run.rows[i]
        if self._abort.is_set():
            end_row(run, i, "cancelled")
            self._fail(job, Failed(503, "the server shut down while this request ran"))
            return True
        if job.cancelled.is_set():
            end_row(run, i, "cancelled")
            self.stats["cancelled"] += 1
            return True
        if not row.finish_reason and len(row.token_ids) >= job.config.max_new_tokens:
            text += end_row(run, i, "length")
        if text:
            self._send(job, Delta(text))
        if row.finish_reason:
            self._finish(job, row.finish_reason, len(row.token_ids))
            return True
        return False

    def _finish(self, job: Job, reason: str, completion_tokens: int) -> None:
        self.stats["completed"] += 1
        self._send(job, Done(reason, completion_tokens))

    def _fail(self, job: Job, event: Failed) -> None:
        self.stats["failed"] += 1
        self._send(job, event)

    @staticmethod
    def _send(job: Job, event: Event) -> None:
        try:
            job.deliver(event)
        except Exception:  # a client's closed event loop must not stop the worker
            log.debug("could not deliver %s", type(event).__name__, exc_info=True)
