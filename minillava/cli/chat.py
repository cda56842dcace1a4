"""`minillava chat`: a multi-turn chat in the terminal, streamed; with a PROMPT it answers once and exits."""

from __future__ import annotations

import argparse
import sys

from minillava.cli.model import DTYPES

HELP = ("/image PATH attaches an image to your next message, /video PATH a video (a file or a folder of frames), "
        "/reset starts over, /quit leaves")


def add_commands(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with a model folder in the terminal")
    chat.add_argument("prompt", nargs="?", default=None, help="answer this one message and exit")
    chat.add_argument("--model", required=True, help="a model folder")
    chat.add_argument("--image", action="append", default=[], help="an image for the first message (repeatable)")
    chat.add_argument("--video", action="append", default=[],
                      help="a video file or a folder of frames for the first message (repeatable)")
    chat.add_argument("--frames", type=int, default=None,
                      help="frames sampled from each video; default: the model's video.frames")
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    chat.set_defaults(run=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from minillava.data.conversation import Video
    from minillava.model import GenerationConfig, MiniLlava
    from minillava.serve.chat import ChatSession

    model = MiniLlava.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed)
    session = ChatSession(model, config, system=args.system)
    for image in args.image:
        session.attach(image)
    for video in args.video:
        session.attach(Video(video, args.frames))
    if args.prompt is not None:
        answer(session, args.prompt)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    note(f"minillava chat with {args.model}: {HELP}")
    while True:
        try:
            line = input("you> " if interactive else "").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line.startswith("/"):
            if not command(session, line):
                break
            continue
        try:
            if interactive:
                print("minillava> ", end="", flush=True)
            answer(session, line)
        except (ValueError, KeyboardInterrupt) as err:
            note(f"(no reply: {err or 'interrupted'})")
    return 0


def answer(session, text: str) -> None:
    for delta in session.stream(text):
        print(delta, end="", flush=True)
    print(flush=True)


def command(session, line: str) -> bool:
    """Run one /command; False means quit."""
    from minillava.data.conversation import Video
    from minillava.data.images import ImageError

    name, _, rest = line.partition(" ")
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        note("(conversation cleared)")
    elif name == "/image" and rest.strip():
        try:
            session.attach(rest.strip())
            note(f"(image attached to your next message: {rest.strip()})")
        except ImageError as err:
            note(f"(image not attached: {err})")
    elif name == "/video" and rest.strip():
        try:
            session.attach(Video(rest.strip()))
            note(f"(video attached to your next message: {rest.strip()})")
        except ImageError as err:
            note(f"(video not attached: {err})")
    else:
        note(f"(unknown command {line!r}: {HELP})")
    return True


def note(text: str) -> None:
    """Status lines go to stderr, so that stdout holds only the replies."""
    print(text, file=sys.stderr, flush=True)
