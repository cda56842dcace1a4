"""`minillava data check` and `minillava data synth`."""

from __future__ import annotations

import argparse
import json
import sys

from minillava.data.formats import FORMATS


def add_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="check and make data sets")
    verbs = data.add_subparsers(dest="verb", required=True, metavar="VERB")

    check = verbs.add_parser("check", help="validate every sample of a data file (no model needed)")
    check.add_argument("data", help="a LLaVA / LLaVA-Pretrain / ShareGPT file (.json or .jsonl)")
    check.add_argument("--image-root", default=None, help="folder the image paths are relative to "
                       "(default: the data file's folder)")
    check.add_argument("--format", default="auto", choices=["auto", *FORMATS.names()])
    check.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this")
    check.add_argument("--json", action="store_true", help="print the bad samples as a JSON array")
    check.set_defaults(run=run_check)

    synth = verbs.add_parser("synth", help="generate a synthetic data set")
    kinds = synth.add_subparsers(dest="kind", required=True, metavar="KIND")
    shapes = kinds.add_parser("shapes", help="images of 1-4 coloured shapes with captions and questions")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--n", type=int, default=1000, help="number of images")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=224)
    shapes.add_argument("--drawing", default="varied", choices=["plain", "varied", "shifted"],
                        help="varied: jittered colours, turns, soft edges, 10+ wordings per question; plain: exact "
                             "colours and hard edges; shifted: drawn and worded unlike both (a robustness test set)")
    add_short_answer_option(shapes)
    shapes.add_argument("--preferences", action="store_true",
                        help="also write preferences.json: a faithful reply preferred over a hallucinated one "
                             "(absent objects, wrong colours, wrong counts), for a dpo stage")
    shapes.set_defaults(run=run_synth_shapes)
    fashion = kinds.add_parser("fashion", help="Fashion-MNIST images (Debian's dataset-fashion-mnist) with "
                               "captions and questions")
    fashion.add_argument("--out", required=True)
    fashion.add_argument("--split", default="train", choices=["train", "test"])
    fashion.add_argument("--n", type=int, default=None, help="number of images, balanced over the 10 classes "
                         "(default: the whole split, 60000 train or 10000 test)")
    fashion.add_argument("--seed", type=int, default=0)
    add_short_answer_option(fashion)
    fashion.add_argument("--image-size", type=int, default=28, help="side of the written images (28: native)")
    fashion.add_argument("--root", default=None, help="folder of the *-ubyte.gz files "
                         "(default: /usr/share/datasets/fashion-mnist)")
    fashion.set_defaults(run=run_synth_fashion)
    small = kinds.add_parser("small-objects", help="small shapes on a large canvas, asked about by colour: train "
                             "and held-out splits where one downscaled view loses the shape and AnyRes tiles keep it")
    small.add_argument("--out", required=True)
    small.add_argument("--n", type=int, default=1000, help="training images")
    small.add_argument("--n-held-out", type=int, default=200, help="held-out images")
    small.add_argument("--seed", type=int, default=0)
    small.add_argument("--image-size", type=int, default=256, help="side of the canvas")
    small.add_argument("--max-objects", type=int, default=3, help="objects per scene: 1 to this many")
    add_short_answer_option(small)
    small.set_defaults(run=run_synth_small_objects)
    motion = kinds.add_parser("motion", help="short videos of a moving shape and one that may appear, with "
                              "questions no single frame answers (direction, what appears)")
    motion.add_argument("--out", required=True)
    motion.add_argument("--n", type=int, default=200, help="number of clips")
    motion.add_argument("--seed", type=int, default=0)
    motion.add_argument("--image-size", type=int, default=64, help="side of the frames (even)")
    motion.add_argument("--frames", type=int, default=16, help="frames per clip")
    motion.add_argument("--as-frames", action="store_true", help="write each clip as a folder of PNG frames, not MP4")
    add_short_answer_option(motion)
    motion.set_defaults(run=run_synth_motion)
    photos = kinds.add_parser("photos", help="the sample photos of scikit-image, scikit-learn and matplotlib "
                              "with captions and questions")
    photos.add_argument("--out", required=True)
    photos.set_defaults(run=run_synth_photos)


def add_short_answer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-short-answer-suffix", action="store_true",
                        help="leave LLaVA-1.5's 'Answer the question using a single word or phrase.' off")


def run_check(args: argparse.Namespace) -> int:
    from minillava.data.images import DEFAULT_MAX_PIXELS
    from minillava.data.validate import check_file

    report = check_file(args.data, args.image_root, fmt=args.format,
                        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, show_progress=not args.json)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=1))
    else:
        for error in report.errors:
            print(error.describe())
    print(f"{report.total - len(report.errors)} of {report.total} samples are good", file=sys.stderr)
    return 0 if report.ok else 1


def run_synth_shapes(args: argparse.Namespace) -> int:
    from minillava.data.synth import synthesize_shapes

    path = synthesize_shapes(args.out, args.n, seed=args.seed, image_size=args.image_size, show_progress=True,
                             drawing=args.drawing, short_answer_suffix=not args.no_short_answer_suffix,
                             preferences=args.preferences)
    print(f"wrote {path}" + (f" and {path.parent / 'preferences.json'}" if args.preferences else ""))
    return 0


def run_synth_motion(args: argparse.Namespace) -> int:
    from minillava.data.motion import synthesize_motion

    path = synthesize_motion(args.out, args.n, seed=args.seed, image_size=args.image_size, frames=args.frames,
                             as_frames=args.as_frames, short_answer_suffix=not args.no_short_answer_suffix,
                             show_progress=True)
    print(f"wrote {path}")
    return 0


def run_synth_fashion(args: argparse.Namespace) -> int:
    from minillava.data.fashion import FASHION_DIR, synthesize_fashion

    path = synthesize_fashion(args.out, args.split, args.n, seed=args.seed, image_size=args.image_size,
                              root=args.root or FASHION_DIR, show_progress=True,
                              short_answer_suffix=not args.no_short_answer_suffix)
    print(f"wrote {path}")
    return 0


def run_synth_small_objects(args: argparse.Namespace) -> int:
    from minillava.data.small_objects import SPLITS, synthesize_small_objects

    path = synthesize_small_objects(args.out, args.n, args.n_held_out, seed=args.seed, image_size=args.image_size,
                                    max_objects=args.max_objects, show_progress=True,
                                    short_answer_suffix=not args.no_short_answer_suffix)
    print(f"wrote {path} and {path.parent / SPLITS['held-out']}")
    return 0


def run_synth_photos(args: argparse.Namespace) -> int:
    from minillava.data.photos import synthesize_photos

    path = synthesize_photos(args.out)
    print(f"wrote {path}")
    return 0
