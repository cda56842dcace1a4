"""`minillava eval` (run, score, fit-ood) and `minillava report`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASK_NAMES = ("vqa", "mc", "pope", "caption", "judge")


def _judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge-url", default=None, help="judge task: an OpenAI-compatible base URL, e.g. "
                        "http://localhost:8000/v1")
    parser.add_argument("--judge-model", default=None, help="judge task: the judge model's name at that endpoint")


def add_commands(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("eval", help="evaluate a model on a task (or: eval score, eval fit-ood)",
                             usage="minillava eval --model DIR --task TASK --data FILE --out DIR [options]\n"
                                   "       minillava eval {score,fit-ood} ...",
                             description="minillava eval --model DIR --task T --data FILE --out DIR runs an "
                             "evaluation; `eval score` scores a predictions file; `eval fit-ood` fits the "
                             "out-of-distribution detector.")
    ev.add_argument("--model", help="a model folder")
    ev.add_argument("--task", choices=TASK_NAMES)
    ev.add_argument("--data", help="evaluation samples: JSONL or a JSON list (LLaVA-format records work too)")
    ev.add_argument("--image-root", default=None, help="folder the image paths start from (default: the data "
                    "file's folder)")
    ev.add_argument("--out", help="folder for predictions.jsonl and metrics.json")
    ev.add_argument("--limit", type=int, default=None, help="only the first N samples")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    ev.add_argument("--post-prompt", default=None,
                    help="text after every question instead of the task's own (vqa and pope: LLaVA-1.5's short-answer "
                         "instruction); --post-prompt '' for a model trained without it")
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ev.add_argument("--no-ood", action="store_true", help="skip OOD scores even when the model has a detector")
    _judge_options(ev)
    ev.set_defaults(run=run_eval)
    actions = ev.add_subparsers(dest="action", metavar="ACTION")

    score = actions.add_parser("score", help="score an existing predictions file and print the metrics as JSON")
    score.add_argument("--task", required=True, choices=TASK_NAMES)
    score.add_argument("--predictions", required=True, help="JSONL: id, prediction, answers (list) or answer "
                       "(+ choices for mc, question for judge)")
    _judge_options(score)
    score.set_defaults(run=run_score)

    fit = actions.add_parser("fit-ood", help="fit the out-of-distribution detector on training images and save it "
                             "in the model folder")
    fit.add_argument("--model", required=True)
    fit.add_argument("--images", required=True, nargs="+", help="training images: data files, folders or images")
    fit.add_argument("--image-root", default=None)
    fit.add_argument("--limit", type=int, default=None, help="at most N images from each source")
    fit.add_argument("--method", choices=["mahalanobis", "knn"], default="mahalanobis")
    fit.add_argument("--k", type=int, default=5, help="knn: the neighbour whose distance is the score")
    fit.add_argument("--heldout", default=None, help="held-out images of the training distribution, for AUROC")
    fit.add_argument("--against", nargs="*", default=[], metavar="NAME=PATH",
                     help="other image sets to measure AUROC against (needs --heldout)")
    fit.set_defaults(run=run_fit_ood)

    report = commands.add_parser("report", help="write EVAL_REPORT.md and MODEL_CARD.md for a run folder")
    report.add_argument("--run", dest="run_dir", required=True,
                        help="a training run folder (or any folder with eval outputs)")
    report.add_argument("--baseline", default=None, help='JSON: {"name": ..., "results": {"<eval or task>": '
                        '{"<metric>": value}}}')
    report.add_argument("--out", default=None, help="where to write (default: the run folder)")
    report.set_defaults(run=run_report)


def _judge(args: argparse.Namespace, task: str) -> dict:
    if task != "judge":
        return {}
    if not (args.judge_url and args.judge_model):
        raise ValueError("the judge task needs --judge-url and --judge-model")
    from minillava.eval.judge import JudgeConfig

    return {"judge": JudgeConfig(args.judge_url, args.judge_model)}


def run_eval(args: argparse.Namespace) -> int:
    missing = [f"--{name.replace('_', '-')}" for name in ("model", "task", "data", "out") if not getattr(args, name)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use `minillava eval score` / `eval fit-ood`)")
    from minillava.cli.model import DTYPES
    from minillava.eval.data import load_samples
    from minillava.eval.ood import Detector
    from minillava.eval.runner import evaluate
    from minillava.model import MiniLlava

    scoring = _judge(args, args.task)
    samples = load_samples(args.data, args.image_root, args.limit)
    model = MiniLlava.from_pretrained(args.model, dtype=DTYPES[args.dtype])
    detector = None if args.no_ood else Detector.load(args.model)
    result = evaluate(model, args.task, samples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      progress=sys.stderr.isatty(), detector=detector, scoring=scoring,
                      post_prompt=args.post_prompt)
    result.metrics |= {"model": str(args.model), "data": str(args.data)}
    out = result.save(args.out)
    print(json.dumps({k: v for k, v in result.metrics.items() if k not in ("by_kind", "n_by_kind")}, indent=1))
    print(f"wrote {out / 'predictions.jsonl'} and {out / 'metrics.json'}", file=sys.stderr)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from minillava.data.formats import InvalidLine, read_records
    from minillava.eval.tasks import TASKS

    records = read_records(args.predictions)
    for index, record in enumerate(records):
        if isinstance(record, InvalidLine):
            raise ValueError(f"{args.predictions}: line {record.line}: {record.message}")
        if not isinstance(record, dict) or "prediction" not in record:
            raise ValueError(f"{args.predictions}[{index}]: each line needs an object with a `prediction`")
    try:
        metrics = TASKS.get(args.task).score(records, **_judge(args, args.task))
    except KeyError as error:
        raise ValueError(f"{args.predictions}: a record lacks {error}") from None
    print(json.dumps(metrics, indent=1, ensure_ascii=False))
    return 0


def run_fit_ood(args: argparse.Namespace) -> int:
    from minillava.eval.data import image_paths
    from minillava.eval.ood import fit_ood, measure
    from minillava.model import MiniLlava

    others = dict(item.split("=", 1) for item in args.against if "=" in item)
    if len(others) != len(args.against) or (others and not args.heldout):
        raise ValueError("--against takes NAME=PATH items and needs --heldout")
    images = [p for source in args.images for p in image_paths(source, args.limit, args.image_root)]
    model = MiniLlava.from_pretrained(args.model)
    detector = fit_ood(model, images, method=args.method, k=args.k, progress=sys.stderr.isatty())
    if others:
        inside = image_paths(args.heldout, args.limit, args.image_root)
        sets = {name: image_paths(path, args.limit, args.image_root) for name, path in others.items()}
        detector.info["auroc"] = measure(model, detector, inside, sets)
        detector.info["auroc_sets"] = {"heldout": len(inside)} | {name: len(v) for name, v in sets.items()}
    detector.save(args.model)
    print(json.dumps({"method": detector.method, "threshold": detector.threshold, "n_fit": len(images),
                      "auroc": detector.info.get("auroc")}, indent=1))
    print(f"wrote {Path(args.model) / 'ood.json'} and ood.safetensors", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from minillava.eval.report import write_reports

    report, card = write_reports(args.run_dir, args.baseline, args.out)
    print(f"wrote {report} and {card}")
    return 0
