"""`minillava init` and `minillava generate`."""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_commands(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="write a new model folder from a vision encoder and a language model")
    init.add_argument("--vision", default="efficientnet-lite0",
                      help="efficientnet-lite0 (embedded), or a CLIP/SigLIP/DINOv2 folder or hub id")
    init.add_argument("--llm", default="smollm2-135m-instruct",
                      help="smollm2-135m-instruct (embedded), or a causal LM folder or hub id")
    init.add_argument("--projector", default="mlp2x_gelu",
                      help="linear, mlp{N}x_gelu, or pixel_shuffle_mlp2x_gelu")
    init.add_argument("--feature-layer", type=int, nargs="+", default=None,
                      help="hidden-state index of the tower (several: concatenated); default -2, "
                           "EfficientNet-Lite0 11 16 (blocks 10 and 15)")
    init.add_argument("--select", choices=["default", "full"], default="default",
                      help="default drops the CLS token, full keeps it")
    init.add_argument("--image-aspect", choices=["pad", "crop", "squash"], default="pad")
    init.add_argument("--position-channels", type=int, default=None,
                      help="2-D position channels appended to each token (CNN encoders); default: "
                           "EfficientNet-Lite0 16, ViT towers 0 (they embed position themselves)")
    init.add_argument("--color-cells", type=int, default=None,
                      help="mean colours of N x N sub-cells appended to each token (CNN encoders; 3 N^2 "
                           "channels); default 0")
    init.add_argument("--chat-template", default=None,
                      help="replace the language model's chat template: 'chatml' (ChatML without a default system "
                           "turn) or a Jinja file")
    init.add_argument("--anyres", type=parse_pinpoints, default=None, metavar="HxW,HxW,...",
                      help="AnyRes (LLaVA-NeXT) tiling: the grid resolutions, height x width in pixels, multiples of "
                           "the tower's input size (e.g. 672x336,336x672,672x672 for a 336 px tower)")
    init.add_argument("--no-image-newline", action="store_true",
                      help="AnyRes without the learned embedding after each row of tiles' features")
    init.add_argument("--anyres-max-views", type=int, default=None, metavar="N",
                      help="AnyRes token reduction (LLaVA-OneVision's anyres_max_N): shrink a tile grid of more "
                           "patches than about N views to that budget; default: no reduction")
    init.add_argument("--video-frames", type=int, default=8, metavar="N",
                      help="frames sampled evenly from each video (a sample or request may ask for others)")
    init.add_argument("--video-max-frames", type=int, default=32, metavar="N", help="the most one video may ask for")
    init.add_argument("--video-pool", type=int, default=2, metavar="P",
                      help="shrink each frame's token grid by P per side (bilinear); 1 keeps every token")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True, help="the model folder to write")
    init.set_defaults(run=run_init)

    gen = commands.add_parser("generate", help="answer one prompt about an image")
    gen.add_argument("--model", required=True, help="a model folder")
    gen.add_argument("--image", action="append", default=[], help="an image (repeat for several)")
    gen.add_argument("--video", action="append", default=[],
                     help="a video file or a folder of frames (repeatable); after the images")
    gen.add_argument("--frames", type=int, default=None,
                     help="frames sampled from each video; default: the model's video.frames")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--system", default=None, help="a system message")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    gen.add_argument("--no-stream", action="store_true", help="print the reply at the end, not as it comes")
    gen.set_defaults(run=run_generate)


def parse_pinpoints(text: str) -> list[list[int]]:
    """'64x32,32x64' -> [[64, 32], [32, 64]] (height, width)."""
    try:
        pinpoints = [[int(side) for side in item.lower().split("x")] for item in text.split(",")]
    except ValueError:
        pinpoints = []
    if not pinpoints or any(len(p) != 2 or min(p) < 1 for p in pinpoints):
        raise argparse.ArgumentTypeError(f"{text!r}: give resolutions as HEIGHTxWIDTH,HEIGHTxWIDTH,...")
    return pinpoints


def run_init(args: argparse.Namespace) -> int:
    from minillava.model import AnyResConfig, MiniLlava, VideoConfig

    anyres = None if args.anyres is None else AnyResConfig(args.anyres, image_newline=not args.no_image_newline,
                                                           max_views=args.anyres_max_views)
    layer = args.feature_layer
    if layer is not None and len(layer) == 1:
        layer = layer[0]
    model = MiniLlava.from_components(args.vision, args.llm, args.projector, seed=args.seed,
                                      feature_layer=layer, select=args.select, image_aspect=args.image_aspect,
                                      position_channels=args.position_channels, color_cells=args.color_cells,
                                      chat_template=args.chat_template, anyres=anyres,
                                      video=VideoConfig(args.video_frames, args.video_max_frames, args.video_pool))
    model.save_pretrained(args.out)
    tokens = (f"{model.tokens_per_image} tokens per image" if anyres is None else
              f"AnyRes over {args.anyres}, {model.tokens_per_image} tokens per view")
    print(f"wrote {args.out}: {args.vision} -> {args.projector} -> {args.llm}, {tokens}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from minillava.data.conversation import Video
    from minillava.model import GenerationConfig, MiniLlava, build_prompt

    model = MiniLlava.from_pretrained(args.model, dtype=DTYPES[args.dtype])
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop,
                              seed=args.seed)
    # Out-of-distribution scores (minillava.eval.ood), only when the model folder has a detector; on stderr.
    from minillava.eval.ood import ood_lines

    for line in ood_lines(model, args.model, args.image):
        print(line, file=sys.stderr)
    media = [*args.image, *(Video(video, args.frames) for video in args.video)]
    run = model.stream([build_prompt(args.prompt, media, system=args.system)], config)
    for deltas in run:
        if not args.no_stream:
            print(deltas[0], end="", flush=True)
    print(run.results[0].text if args.no_stream else "")
    return 0
