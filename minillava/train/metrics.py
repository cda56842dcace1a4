"""Training metrics as JSON lines that survive a kill and a resume, and a loss plot drawn from them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _json_value(value: Any) -> Any:
    """Let callers log a scalar tensor or numpy number directly: anything with .item() becomes a plain number."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"metrics: {type(value).__name__} is not JSON-serialisable; log plain numbers or strings")


def _complete_lines(path: Path) -> tuple[list[str], int]:
    """Newline-terminated lines of the file and the byte length they cover (a torn tail is left out)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8").splitlines(), end


def records(path: str | Path) -> list[dict]:
    """Every record of a metrics file, skipping a final line torn by a killed writer."""
    path = Path(path)
    if not path.exists():
        return []
    lines, _ = _complete_lines(path)
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # a crash of the whole machine can leave junk in the last line
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({err}); fix or delete that line") from err
    return out


class MetricsLog:
    """Append-only JSON-lines log, one record per line, flushed as written.

    With `resume_step`, the file is first rewritten to hold only what was logged up to that checkpoint:
    records with step <= resume_step, and records without a step that come before the first later one.
    Log a step's records before saving its checkpoint, so that resuming neither loses nor repeats them.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if resume_step is not None:
                self._keep_up_to(resume_step)
            else:
                self._drop_torn_tail()
        self._file = open(self.path, "a", encoding="utf-8")

    def _drop_torn_tail(self) -> None:
        # Appending after a torn line would glue the next record onto it.
        _, end = _complete_lines(self.path)
        if end != self.path.stat().st_size:
            os.truncate(self.path, end)

    def _keep_up_to(self, resume_step: int) -> None:
        kept = []
        for record in records(self.path):
            if "step" in record and record["step"] > resume_step:
                break
            kept.append(record)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # a kill during the rewrite leaves the old file, and the resume redoes this

    def log(self, record: dict) -> None:
        """Append one record (a flat dict, usually with "step") as one line."""
        self._file.write(json.dumps(record, default=_json_value) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r.get("step") is not None]
    return [s for s, _ in points], [v for _, v in points]


def _draw(fig: Figure, ax, rows: list[dict], title: str) -> None:
    train_steps, train_loss = _series(rows, "loss")
    val_steps, val_loss = _series(rows, "val_loss")
    lr_steps, lr = _series(rows, "lr")
    lines = []
    if train_steps:
        marker = "." if len(train_steps) == 1 else None  # a lone point is invisible as a line
        lines += ax.plot(train_steps, train_loss, color="tab:blue", marker=marker, label="train loss")
    if val_steps:
        lines += ax.plot(val_steps, val_loss, color="tab:orange", marker="o", label="validation loss")
    if lr_steps:
        lr_ax = ax.twinx()
        lines += lr_ax.plot(lr_steps, lr, color="tab:gray", linestyle="--", linewidth=1,
                            marker="." if len(lr_steps) == 1 else None, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_zorder(lr_ax.get_zorder() + 1)  # losses and legend above the lr line, not hidden behind it
        ax.patch.set_visible(False)
    if not lines:
        ax.text(0.5, 0.5, "no loss records yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)


def _save(fig: Figure, out_png: str | Path) -> Path:
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    return out


def _draw_rewards(ax, rows: list[dict]) -> None:
    """A preference stage's reward accuracy (left axis) and reward margin (right axis), train and validation."""
    lines = []
    for key, style, axis in (("reward_accuracy", "-", ax), ("val_reward_accuracy", "o", ax)):
        steps, values = _series(rows, key)
        if steps:
            lines += axis.plot(steps, values, style, color="tab:green", label=key.replace("_", " "))
    margin_ax = ax.twinx()
    for key, style in (("reward_margin", "-"), ("val_reward_margin", "o")):
        steps, values = _series(rows, key)
        if steps:
            lines += margin_ax.plot(steps, values, style, color="tab:purple", label=key.replace("_", " "))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("reward accuracy")
    margin_ax.set_ylabel("reward margin")
    ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.grid(True, alpha=0.3)
    ax.set_title("chosen vs rejected rewards")


def plot_losses(metrics_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Draw train loss, validation loss and (on a second axis) learning rate against step into a PNG; a
    preference stage gets a second panel with its reward accuracy and margin."""
    rows = records(metrics_path)
    rewards = any("reward_accuracy" in r for r in rows)
    # A bare Figure with the Agg canvas: no display, and no change to the caller's global pyplot backend.
    fig = Figure(figsize=(14 if rewards else 8, 4.5))
    FigureCanvasAgg(fig)
    _draw(fig, fig.add_subplot(1, 2 if rewards else 1, 1), rows, title or f"Loss ({Path(metrics_path).name})")
    if rewards:
        _draw_rewards(fig.add_subplot(1, 2, 2), rows)
    return _save(fig, out_png)


def plot_stages(metrics_paths: dict[str, str | Path], out_png: str | Path) -> Path:
    """One panel per stage, side by side: the loss curves of a whole multi-stage run in one PNG."""
    fig = Figure(figsize=(6 * max(1, len(metrics_paths)), 4.5))
    FigureCanvasAgg(fig)
    for k, (stage, path) in enumerate(metrics_paths.items(), start=1):
        _draw(fig, fig.add_subplot(1, len(metrics_paths), k), records(path), stage)
    return _save(fig, out_png)
