"""The demo's report: accuracy tables of both stages side by side, sample answers, targets, timing."""

from __future__ import annotations

import os
from pathlib import Path

# (data set, kind or "overall", minimum accuracy) on held-out data after the full preset (the README's targets).
TARGETS = (
    ("shapes", "overall", 0.90), ("shapes", "color", 0.95), ("shapes", "shape", 0.95), ("shapes", "count", 0.85),
    ("shapes", "position", 0.85), ("shapes", "yesno", 0.90), ("fashion", "item", 0.85), ("fashion", "yesno", 0.85),
)
YES_RATIO = (0.4, 0.6)
MAX_SHIFT_DROP = 0.10  # the shifted shapes set may score at most this much below the held-out shapes set
THUMBNAIL_WIDTH = 112  # pixels: the scenes are 224 px, the photos up to 512


def _value(stage: dict, data: str, kind: str) -> float | None:
    if data not in stage:
        return None
    return stage[data]["accuracy"] if kind == "overall" else stage[data]["by_kind"].get(kind)


def check_targets(stage: dict) -> list[dict]:
    rows = [{"target": f"{data} {kind} >= {minimum:.0%}", "value": _value(stage, data, kind),
             "met": None if _value(stage, data, kind) is None else _value(stage, data, kind) >= minimum}
            for data, kind, minimum in TARGETS]
    ratio = stage.get("shapes", {}).get("yes_ratio")
    rows.append({"target": f"shapes yes-ratio in {YES_RATIO[0]}-{YES_RATIO[1]}", "value": ratio,
                 "met": None if ratio is None else YES_RATIO[0] <= ratio <= YES_RATIO[1]})
    held_out, shifted = _value(stage, "shapes", "overall"), _value(stage, "shapes-shifted", "overall")
    drop = None if held_out is None or shifted is None else held_out - shifted
    rows.append({"target": f"shapes-shifted overall at most {MAX_SHIFT_DROP:.0%} below shapes", "value": drop,
                 "met": None if drop is None else drop <= MAX_SHIFT_DROP})
    return rows


def targets_table(stages: dict[str, dict]) -> str:
    """Markdown: one row per target, one column per stage (or model): the value and whether it is met."""
    checked = {name: check_targets(stage) for name, stage in stages.items()}
    lines = ["| target | " + " | ".join(checked) + " |", "|---|" + "---:|" * len(checked)]
    for i, row in enumerate(next(iter(checked.values()))):
        cells = []
        for rows in checked.values():
            value, met = rows[i]["value"], rows[i]["met"]
            cells.append("-" if value is None else f"{value:.3f} {'met' if met else 'missed'}")
        lines.append(f"| {row['target']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def accuracy_table(results: dict, column: str = "after {} (%)") -> str:
    """Markdown: one row per data set and kind, one column per stage (its header: `column` with the name).

    The rows are the last stage's data sets; n is each stage's count where they differ (earlier stages may be
    asked fewer questions), and a data set a stage was not asked about shows "-".
    """
    stages = results["stages"]
    names = list(stages)
    lines = ["| data | question kind | n | " + " | ".join(column.format(n) for n in names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]

    def count(data: str, kind: str) -> str:
        found = [stages[n][data]["n"] if kind == "overall" else stages[n][data].get("n_by_kind", {}).get(kind)
                 for n in names if data in stages[n]]
        found = list(dict.fromkeys(c for c in found if c is not None))
        return " / ".join(str(c) for c in found)

    for data, entry in stages[names[-1]].items():
        for kind in [*entry["by_kind"], "overall"]:
            values = " | ".join(_pct(_value(stages[n], data, kind)) for n in names)
            label = f"**{kind}**" if kind == "overall" else kind
            lines.append(f"| {data} | {label} | {count(data, kind)} | {values} |")
        ratios = " | ".join(f"{stages[n][data]['yes_ratio']:.2f}" if stages[n].get(data, {}).get("yes_ratio")
                            is not None else "-" for n in names)
        lines.append(f"| {data} | yes-ratio of yes/no answers | | {ratios} |")
    return "\n".join(lines)


def _cell(text) -> str:
    text = " / ".join(text) if isinstance(text, list) else str(text)
    return text.replace("|", "\\|").replace("\n", " ")


def _thumbnail(image: str, folder: Path) -> str:
    """An HTML image cell (markdown cannot size an image) whose path is relative to the report's folder."""
    source = Path(os.path.relpath(Path(image).resolve(), folder.resolve())).as_posix()
    return f'<img src="{source}" width="{THUMBNAIL_WIDTH}"><br>{Path(image).name}'


def _answers_table(first: str, rows: list[dict], names: list[str], folder: Path) -> list[str]:
    """Markdown rows: an image (shown the first time it comes), its question and reference, each stage's answer."""
    lines = [f"| {first} | question | reference | " + " | ".join(f"after {n}" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    shown: set[str] = set()
    for row in rows:
        image = row["image"]
        cell = Path(image).name if image in shown else _thumbnail(image, folder)
        shown.add(image)
        answers = " | ".join(_cell(row[n]) for n in names)
        lines.append(f"| {cell} | {_cell(row['question'].split(chr(10))[0])} | "
                     f"{_cell(row['reference'])} | {answers} |")
    return lines


def write_report(results: dict, path: Path) -> None:
    names = list(results["stages"])
    training = results["training"]
    lines = [
        f"# minillava demo report ({results['preset']} preset)", "",
        "EfficientNet-Lite0 (ImageNet) + mlp2x_gelu projector + SmolLM2-135M-Instruct, trained offline on "
        "synthetic shapes" + (" and Fashion-MNIST" if results["fashion_mnist"] else " (Fashion-MNIST not installed)")
        + ". Held-out images only in the tables below.", "",
        f"Time: {results['seconds']['total']:.0f} s in all (training {results['seconds']['train']:.0f} s, "
        f"evaluation {results['seconds']['evaluate']:.0f} s) on {results['device']} with {results['threads']} "
        "threads; each stage's model evaluated in the precision it trained in ("
        + ", ".join(f"{name} {p}" for name, p in results.get("eval_precision", {}).items()) + ").", "",
        "## Accuracy on held-out data", "",
        "Open questions are scored with VQA accuracy (exact match after the official answer normalisation); "
        "yes/no questions as POPE (a reply whose first sentence says no/not is a no).", "",
        accuracy_table(results), "",
        "## Training", "",
        "| stage | steps | samples | time (s) | final train loss | final validation loss | skipped samples |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in training:
        val = "-" if s["final_val_loss"] is None else f"{s['final_val_loss']:.3f}"
        lines.append(f"| {s['stage']} | {s['steps']} | {s['samples']} | {s['seconds']:.0f} | "
                     f"{s['final_train_loss']:.3f} | {val} | {s['skipped']['total']} |")
    lines += ["", "![loss curves](loss.png)", "", "## Targets (for the full preset)", "",
              targets_table(results["stages"]),
              "", "## Held-out images: what each stage answers", "",
              "After stage 1 the model has only learned to describe images, so it answers questions with a caption; "
              "after stage 2 it answers in the format the question asks for.", "",
              *_answers_table("image", results["samples"], names, path.parent),
              "", "## Real photos (never trained on: out of distribution)", "",
              *_answers_table("photo", results["photos"], names, path.parent)]
    path.write_text("\n".join(lines) + "\n")
