"""`minillava export`, `minillava import` and `minillava merge`."""

from __future__ import annotations

import argparse

from minillava.cli.model import DTYPES

FORMATS = ("hf-llava", "onnx", "gguf")


def add_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a model in another format (hf-llava: transformers, vLLM; "
                                 "onnx: the vision tower + projector for onnxruntime; gguf: the language "
                                 "model + an mmproj file for llama.cpp)")
    export.add_argument("--model", required=True,
                        help="a model folder, or a training checkpoint / stage folder (its LoRA is merged first)")
    export.add_argument("--format", choices=FORMATS, default="hf-llava")
    export.add_argument("--out", required=True, help="the folder to write")
    export.add_argument("--target", choices=["transformers", "vllm"], default="transformers",
                        help="vllm also refuses what vLLM cannot load (a DINOv2 tower, a linear projector)")
    export.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="tensor type of the written weights (default: float32)")
    export.add_argument("--quant", nargs="+", default=["f16"], metavar="QUANT",
                        help="gguf: one model file per type, from f16 q8_0 q4_k_m (the quantized ones need "
                             "llama-cpp-python); the mmproj file is always f16")
    export.add_argument("--no-check", dest="check", action="store_false",
                        help="gguf: skip loading the files in llama.cpp to compare its tokens and answer with ours")
    export.add_argument("--max-shard-size", default="5GB", help="split the weights into shards above this size")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.set_defaults(run=run_export)

    imp = commands.add_parser("import", help="make a model folder from a llava-hf or original LLaVA checkpoint")
    imp.add_argument("--from", dest="source", required=True, help="the checkpoint folder")
    imp.add_argument("--out", required=True, help="the model folder to write")
    imp.add_argument("--vision", default=None,
                     help="original LLaVA: the tower folder or hub id (default: the config's mm_vision_tower)")
    imp.add_argument("--llm", default=None,
                     help="original LLaVA stage-1 folder (mm_projector.bin only): the base LM folder or hub id "
                          "(default: the config's _name_or_path)")
    imp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    imp.set_defaults(run=run_import)

    merge = commands.add_parser("merge", help="fold a training checkpoint's LoRA into the LM: a model folder")
    merge.add_argument("--model", required=True,
                       help="a checkpoint folder (RUN/<stage>/checkpoints/step-*) or a stage folder (its newest)")
    merge.add_argument("--out", required=True, help="the model folder to write")
    merge.set_defaults(run=run_merge)


def run_export(args: argparse.Namespace) -> int:
    from minillava.export.hf_llava import export_hf_llava, hf_layout
    from minillava.export.merge import load_model

    model = load_model(args.model)
    if args.format == "onnx":
        from minillava.export.onnx import GRAPH, export_onnx

        report = export_onnx(model, args.out, overwrite=args.overwrite)
        print(f"wrote {report.folder}/{GRAPH}: pixel_values {report.input_shape} -> image_embeds "
              f"{report.output_shape}; onnxruntime matches minillava within {report.max_abs_diff:.2g}")
        return 0
    if args.format == "gguf":
        from minillava.export.llamacpp import export_gguf

        report = export_gguf(model, args.out, quants=tuple(args.quant), overwrite=args.overwrite, check=args.check)
        files = ", ".join(f"{m['file']} ({m['bytes'] / 1e6:.1f} MB)" for m in report.models.values())
        print(f"wrote {report.folder}: {files} + {report.mmproj} ({report.mmproj_bytes / 1e6:.1f} MB)")
        if report.checked:
            agree = ", ".join(f"{q} {'equal' if a['equal'] else 'differs'}" for q, a in report.answers.items()
                              if q != "minillava")
            print(f"llama.cpp {report.llama_cpp}: tokenizer equal; greedy answer vs minillava's: {agree}")
        else:
            print("not checked in llama.cpp (install llama-cpp-python to check and to quantize)")
        return 0
    dtype = DTYPES[args.dtype] if args.dtype else None
    out = export_hf_llava(model, args.out, target=args.target, dtype=dtype, max_shard_size=args.max_shard_size,
                         overwrite=args.overwrite)
    print(f"wrote {out} ({args.format}, for {args.target}); load it with "
          f"{hf_layout(model)[1]}.from_pretrained({str(out)!r}) and AutoProcessor")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from minillava.export.importer import import_llava

    out = import_llava(args.source, args.out, vision=args.vision, llm=args.llm, overwrite=args.overwrite)
    print(f"wrote {out}; try: minillava generate --model {out} --image IMAGE --prompt 'Describe the image.'")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from minillava.export.merge import merge_to_folder

    out = merge_to_folder(args.model, args.out)
    print(f"wrote {out}: the checkpoint's LoRA folded into the language model")
    return 0
