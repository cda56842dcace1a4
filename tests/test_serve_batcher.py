"""The model worker: batches share forward passes, rows end on their own, cancellation and shutdown are clean."""

from __future__ import annotations

import threading

import pytest
import torch

from minillava.model import GenerationConfig, MiniLlava, build_prompt
from minillava.serve.batcher import Batcher, Delta, Done, Failed, Job, QueueFull, ShuttingDown
from minillava.serve.convert import batch_key


@pytest.fixture(scope="module")
def model(tiny_towers, tiny_llms) -> MiniLlava:
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    torch.manual_seed(0)
    for weight in model.language_model.parameters():  # larger weights: replies differ by prompt
        torch.nn.init.normal_(weight, std=0.2)
    return model.eval()


class Recorder:
    """Collects one job's events, as the app's per-request queue does."""

    def __init__(self, on_delta=None):
        self.events: list = []
        self.ended = threading.Event()
        self.on_delta = on_delta

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, Delta) and self.on_delta:
            self.on_delta()
        if isinstance(event, Done | Failed):
            self.ended.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))

    def wait(self) -> list:
        assert self.ended.wait(60), "the job never ended"
        return self.events


def job(model, text: str, images=(), max_new_tokens: int = 6, **options) -> tuple[Job, Recorder]:
    sample = model.encoder.encode(build_prompt(text, list(images)), add_generation_prompt=True)
    pixels = model.pixel_values(sample.images) if sample.images else None
    config = GenerationConfig(max_new_tokens=max_new_tokens, **options)
    recorder = Recorder()
    return Job(sample.input_ids, pixels, config, batch_key(config, object()), recorder), recorder


def solo(model, text: str, images=(), max_new_tokens: int = 6, **options):
    config = GenerationConfig(max_new_tokens=max_new_tokens, **options)
    return model.generate([build_prompt(text, list(images))], config)[0]


def test_waiting_jobs_share_a_batch_and_each_ends_at_its_own_limit(model, images):
    batcher = Batcher(model, max_batch_size=8, wait_s=0)
    specs = [("Hello there.", (), 3), ("What colour?", images[:1], 9), ("Two pictures.", images[1:3], 5),
             ("Tell me more about it, please.", (), 7)]
    jobs = [job(model, text, imgs, n) for text, imgs, n in specs]
    for j, _ in jobs:  # all waiting before the worker starts
        batcher.submit(j)
    batcher.start()
    for (text, imgs, n), (_, recorder) in zip(specs, jobs, strict=True):
        events = recorder.wait()
        expected = solo(model, text, imgs, n)
        assert recorder.text == expected.text
        assert events[-1] == Done(expected.finish_reason, len(expected.token_ids))
        assert len(expected.token_ids) == n
    batcher.stop()
    assert batcher.stats["batches"] == 1 and batcher.stats["rows"] == 4 and batcher.stats["completed"] == 4


def test_different_sampling_settings_run_in_separate_batches(model):
    batcher = Batcher(model, max_batch_size=8, wait_s=0)
    greedy = [job(model, f"Greedy {i}.") for i in range(2)]
    sampled = [job(model, f"Sampled {i}.", temperature=0.8) for i in range(2)]
    seeded = job(model, "Seeded.", temperature=0.8, seed=5)
    for j, _ in [greedy[0], sampled[0], seeded, greedy[1], sampled[1]]:
        batcher.submit(j)
    batcher.start()
    for _, recorder in [*greedy, *sampled, seeded]:
        recorder.wait()
    batcher.stop()
    assert batcher.stats["batches"] == 3  # greedy pair, sampled pair, the seeded one alone
    assert seeded[1].text == solo(model, "Seeded.", temperature=0.8, seed=5).text  # the seed alone decides
    assert greedy[1][1].text == solo(model, "Greedy 1.").text


def test_a_cancelled_row_stops_without_holding_up_the_others(model):
    batcher = Batcher(model, max_batch_size=4, wait_s=0)
    gone, gone_events = job(model, "I will hang up.", max_new_tokens=200)
    gone_events.on_delta = gone.cancel  # the client leaves after its first text
    stay, stay_events = job(model, "I stay.", max_new_tokens=12)
    batcher.submit(gone)
    batcher.submit(stay)
    batcher.start()
    stay_events.wait()
    batcher.stop()
    assert stay_events.text == solo(model, "I stay.", max_new_tokens=12).text
    assert not any(isinstance(e, Done | Failed) for e in gone_events.events)
    assert sum(isinstance(e, Delta) for e in gone_events.events) <= 2
    assert batcher.stats["cancelled"] == 1 and batcher.stats["completed"] == 1


def test_queue_limit_and_shutdown_refusals(model):
    batcher = Batcher(model, max_queue=2)  # not started: nothing leaves the queue
    (first, first_events), (second, _) = job(model, "a"), job(model, "b")
    batcher.submit(first)
    batcher.submit(second)
    with pytest.raises(QueueFull):
        batcher.submit(job(model, "c")[0])
    first.cancel()  # a waiting client that left frees its place
    batcher.submit(job(model, "d")[0])
    batcher.stop()
    with pytest.raises(ShuttingDown):
        batcher.submit(job(model, "e")[0])
    assert first_events.events == []  # its client is gone: nothing more is sent to it
    assert batcher.stats["cancelled"] == 1 and batcher.stats["failed"] == 2  # b and d never ran


def test_stop_cancels_what_is_left_after_the_grace_period(model):
    batcher = Batcher(model, max_batch_size=1, wait_s=0)
    running, running_events = job(model, "A long answer.", max_new_tokens=2000)
    started = threading.Event()
    running_events.on_delta = started.set
    waiting, waiting_events = job(model, "Never runs.")
    batcher.start()
    batcher.submit(running)
    assert started.wait(60)
    batcher.submit(waiting)
    batcher.stop(grace_s=0.05)
    assert running_events.wait()[-1].status == 503
    assert waiting_events.wait() == [Failed(503, "the server shut down before this request ran")]
    assert not batcher._thread.is_alive()


def test_a_failing_batch_reports_500_and_the_worker_goes_on(model, images):
    batcher = Batcher(model, wait_s=0)
    broken, broken_events = job(model, "What is it?", images[:1])
    broken.pixel_values = None  # image slots without pixels: the model refuses the batch
    batcher.start()
    batcher.submit(broken)
    event = broken_events.wait()[-1]
    assert isinstance(event, Failed) and event.status == 500 and "ImageSlotError" in event.message
    fine, fine_events = job(model, "Still there?")
    batcher.submit(fine)
    assert fine_events.wait()[-1] == Done("length", 6)
    batcher.stop()


def test_the_worker_waits_for_requests_still_being_prepared(model):
    batcher = Batcher(model, max_batch_size=8, wait_s=0, max_prepare_wait_s=60)
    batcher.start()
    jobs = [job(model, f"Request {i}.") for i in range(3)]
    with batcher.preparing():  # e.g. its images are still being decoded
        with batcher.preparing():
            batcher.submit(jobs[0][0])  # the worker takes it, sees two more coming, and waits
            batcher.submit(jobs[1][0])
        batcher.submit(jobs[2][0])
    for _, recorder in jobs:
        recorder.wait()
    batcher.stop()
    assert batcher.stats["batches"] == 1 and batcher.stats["rows"] == 3
