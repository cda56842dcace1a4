"""What a run folder holds, for reports: the recipe, each stage's summary, the model, evaluation outputs.

Where it looks (all optional; a report says what it did not find):
- RUN/config.yaml: the resolved training recipe `minillava train` writes.
- RUN/<stage>/summary.json, RUN/<stage>/metrics.jsonl, RUN/<stage>/final/: per stage, in the recipe's order
  (without a recipe: every folder that has a summary.json).
- the model: the last stage's final/ folder; else RUN itself or the newest folder below it with a minillava
  config.json.
- evaluation outputs: every metrics.json with a "task" key at any depth below RUN (checkpoints skipped),
  e.g. RUN/eval/<name>/metrics.json from `minillava eval --out RUN/eval/<name>`.
- RUN/results.json: a demo's results, shown as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TRAINING_KEYS = frozenset({"step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"})


@dataclass
class StageInfo:
    name: str
    folder: Path
    summary: dict | None
    final: Path | None
    # The last value of each metric logged in metrics.jsonl besides the training ones (val_loss, eval tasks).
    logged: dict = field(default_factory=dict)


@dataclass
class EvalOutput:
    name: str  # the folder, relative to the run
    task: str
    metrics: dict
    folder: Path


@dataclass
class RunInfo:
    root: Path
    config: dict | None = None
    stages: list[StageInfo] = field(default_factory=list)
    model_dir: Path | None = None
    model_config: dict | None = None
    evals: list[EvalOutput] = field(default_factory=list)
    results: dict | list | None = None
    ood: dict | None = None


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _skipped(path: Path, root: Path) -> bool:
    return any(part in ("checkpoints",) or part.startswith(".") for part in path.relative_to(root).parts)


def _logged(metrics_file: Path) -> dict:
    last: dict = {}
    if not metrics_file.is_file():
        return last
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            step = record.get("step")
            for key, value in record.items():
                if key not in TRAINING_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
                    last[key] = {"value": value, "step": step}
    return last


def _is_model_folder(folder: Path) -> bool:
    config = _json(folder / "config.json")
    return isinstance(config, dict) and "vision" in config and "projector" in config


def _stages(root: Path, config: dict | None) -> list[StageInfo]:
    names = [s.get("name") for s in (config or {}).get("stages", []) if isinstance(s, dict)]
    if not names:
        names = sorted(p.parent.name for p in root.glob("*/summary.json"))
    stages = []
    for name in names:
        folder = root / str(name)
        if not folder.is_dir():
            continue
        final = folder / "final"
        summary = _json(folder / "summary.json")
        stages.append(StageInfo(str(name), folder, summary if isinstance(summary, dict) else None,
                                final if _is_model_folder(final) else None, _logged(folder / "metrics.jsonl")))
    return stages


def _model_dir(root: Path, stages: list[StageInfo]) -> Path | None:
    finals = [s.final for s in stages if s.final is not None]
    if finals:
        return finals[-1]
    if _is_model_folder(root):
        return root
    found = [p.parent for p in root.rglob("config.json") if not _skipped(p, root) and _is_model_folder(p.parent)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _evals(root: Path) -> list[EvalOutput]:
    out = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = _json(path)
        if _skipped(path, root) or not isinstance(metrics, dict) or "task" not in metrics:
            continue
        name = str(path.parent.relative_to(root)) if path.parent != root else metrics["task"]
        out.append(EvalOutput(name, str(metrics["task"]), metrics, path.parent))
    return out


def inspect_run(root: str | Path) -> RunInfo:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {str(root)!r} not found")
    config = None
    for name in ("config.yaml", "config.yml"):
        if (root / name).is_file():
            loaded = yaml.safe_load((root / name).read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
            break
    info = RunInfo(root, config, _stages(root, config))
    info.model_dir = _model_dir(root, info.stages)
    if info.model_dir is not None:
        info.model_config = _json(info.model_dir / "config.json")
        ood = _json(info.model_dir / "ood.json")
        info.ood = ood if isinstance(ood, dict) else None
    info.evals = _evals(root)
    if (root / "results.json").is_file():
        info.results = _json(root / "results.json")
    return info
