"""Metrics log: resume drops what the killed run logged after its checkpoint; the loss plot always renders."""

from __future__ import annotations

import json

import pytest
import torch

from minillava.train.metrics import MetricsLog, plot_losses, records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write(path, rows, torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def test_log_appends_flushed_lines_that_read_back(tmp_path):
    path = tmp_path / "logs" / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.log({"step": 1, "loss": torch.tensor(2.5), "lr": 1e-3})
        assert records(path) == [{"step": 1, "loss": 2.5, "lr": 1e-3}]  # readable before close: flushed
        log.log({"step": 2, "loss": 2.0})
    assert [r["step"] for r in records(path)] == [1, 2]


def test_resume_keeps_only_what_was_logged_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"event": "start"}] + [{"step": s, "loss": 1 / s} for s in range(1, 9)]
    rows.insert(6, {"step": 5, "val_loss": 0.3})
    rows.append({"event": "after step 8"})
    _write(path, rows, torn='{"step": 9, "lo')
    assert records(path)[-1] == {"event": "after step 8"}  # the torn line is skipped

    with MetricsLog(path, resume_step=5) as log:
        assert records(path) == rows[:7]  # the header, steps 1-5 and the step-5 validation
        log.log({"step": 6, "loss": 0.1})
    assert records(path) == rows[:7] + [{"step": 6, "loss": 0.1}]


def test_appending_without_resume_drops_a_torn_tail_first(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 1, "loss": 1.0}], torn='{"step": 2, "loss"')
    with MetricsLog(path) as log:
        log.log({"step": 2, "loss": 0.5})
    assert records(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        records(path)


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_with_train_validation_and_learning_rate(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 3 / s, "lr": 1e-3 * min(1, s / 5)} for s in range(1, 21)]
    rows += [{"step": s, "val_loss": 2.5 / s} for s in (10, 20)]
    _write(path, rows)
    out = plot_losses(path, tmp_path / "plots" / "loss.png", title="stage 1")
    assert out == tmp_path / "plots" / "loss.png"
    _assert_png(out)


@pytest.mark.parametrize("rows", [
    [{"step": s, "loss": 1.0 / s} for s in range(1, 5)],  # train only, no validation, no lr
    [{"step": 1, "loss": 2.0}],  # a single point
    [{"step": 1, "val_loss": 2.0, "lr": 1e-4}],  # validation only
    [],  # nothing yet
], ids=["train-only", "single-point", "val-only", "empty"])
def test_plot_renders_partial_logs(tmp_path, rows):
    path = tmp_path / "metrics.jsonl"
    _write(path, rows)
    _assert_png(plot_losses(path, tmp_path / "loss.png"))
