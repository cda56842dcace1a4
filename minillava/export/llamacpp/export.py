"""`export --format gguf`: a language-model GGUF per quantization and an mmproj GGUF for llama.cpp, checked in
llama.cpp itself (through llama-cpp-python) when it is installed.

The folder holds `model-<quant>.gguf` (f16, q8_0, q4_k_m: the two quantized ones made by llama.cpp's own
quantizer from the f16 file), `mmproj-f16.gguf`, `chat_template.jinja` (our prompt layout for llama-cpp-python's
chat handler) and `gguf_export.json` (files, sizes, and the check: llama.cpp's tokens for probe texts against
ours, its greedy answer about a check image against minillava's).
"""

from __future__ import annotations

import ctypes
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minillava.export.llamacpp.language import LanguageModelError, architecture, write_language_model
from minillava.export.llamacpp.mmproj import MmprojError, plan_mmproj, write_mmproj
from minillava.export.llamacpp.runtime import (
    FLATTEN_FOR_LLAMA_CPP,
    REPORT,
    TEMPLATE_FILE,
    RuntimeMissing,
    ask,
    image_embeddings,
    llama_cpp_module,
    load,
)
from minillava.export.llamacpp.vocab import VocabError, build_vocab
from minillava.paths import atomic_folder

log = logging.getLogger(__name__)
# our name -> llama.cpp's file type (llama_ftype) for its quantizer
QUANTS = {"f16": None, "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
MMPROJ = "mmproj-f16.gguf"
PROBES = ("Describe the image in 12 words, then count: 1, 22, 333, 4444.",
          "<|im_start|>user\nIt's  two   spaces\tand tabs\n\nDon't  stop!<|im_end|>\n")
CHECK_QUESTION = "Describe the image."
CHECK_TOKENS = 16
# Mean per-token cosine of llama.cpp's image embeddings to ours below which an export without a CLS token is refused.
MIN_IMAGE_COSINE = 0.99
CLS_LAST = ("llama.cpp's LLaVA graph appends the CLS token after the patches but gives the positions and keeps the "
            "rows of a CLS-first sequence (llama.cpp issue 25814, unfixed in llama-cpp-python {version}), so CLIP "
            "towers' image tokens differ from minillava's (mean cosine {cosine:.3f}); SigLIP towers (no CLS) are exact")


class GGUFExportError(ValueError):
    """The model cannot be written as GGUF, or llama.cpp reads it differently from minillava."""


@dataclass
class GGUFExport:
    folder: str
    mmproj: str
    models: dict  # quant -> {"file", "bytes"}
    mmproj_bytes: int
    tokens_per_image: int
    checked: bool = False  # llama.cpp loaded the files and the checks below ran
    tokenizer_equal: bool | None = None
    image_cosine: float | None = None  # llama.cpp's image embeddings against ours: mean per-token cosine
    image_max_abs_diff: float | None = None
    notes: list = field(default_factory=list)
    answers: dict = field(default_factory=dict)  # quant -> {"llama.cpp": text}, plus "minillava"
    llama_cpp: str | None = None


def plan_gguf(model):
    """Refuse up front what the two files cannot hold, with the reason."""
    try:
        plan = plan_mmproj(model)
        architecture(model.language_model.config)
    except (MmprojError, LanguageModelError) as error:
        raise GGUFExportError(str(error)) from None
    if hasattr(model.language_model, "peft_config"):
        raise GGUFExportError("the language model still carries LoRA adapters: export a merged model "
                              "(`minillava merge`, or pass the checkpoint to export, which merges)")
    if not model.tokenizer.chat_template:
        raise GGUFExportError("the language model has no chat template; llama.cpp's chat API needs one")
    return plan


def check_image(model, seed: int = 0) -> Image.Image:
    """A seeded image at the tower's input size: no resizing, so both runtimes see the same pixels."""
    size = model.vision.transform.size[0]
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth blocks rather than pixel noise
    return Image.fromarray(np.kron(coarse, np.ones((size // 4, size // 4, 1), dtype=np.uint8))).resize((size, size))


def quantize(llama_cpp, source: Path, target: Path, quant: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise GGUFExportError(f"llama.cpp's quantizer failed ({status}) making {target.name}")


def export_gguf(model, out: str | Path, quants: tuple[str, ...] = ("f16",), overwrite: bool = False,
                check: bool = True) -> GGUFExport:
    """Write the GGUF pair into `out`; with llama-cpp-python installed (needed for q8_0 / q4_k_m) and `check`,
    load it in llama.cpp and compare its tokenizer and greedy answer with minillava's."""
    unknown = [q for q in quants if q not in QUANTS]
    if unknown or not quants:
        raise GGUFExportError(f"quantization {unknown or quants}: choose from {list(QUANTS)}")
    plan = plan_gguf(model)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GGUFExportError(f"{out} exists and is not empty; choose another output folder or pass --overwrite")
    llama_cpp = None
    if any(q != "f16" for q in quants) or check:
        try:
            llama_cpp = llama_cpp_module()
        except RuntimeMissing as missing:
            if any(q != "f16" for q in quants):
                raise GGUFExportError(f"{missing} (q8_0 and q4_k_m are made by llama.cpp's quantizer)") from None
            log.warning("%s: writing the files without the llama.cpp check", missing)
    lm = model.language_model
    try:
        vocab = build_vocab(model.tokenizer, lm.get_input_embeddings().weight.shape[0], model.tokenizer.chat_template)
    except VocabError as error:
        raise GGUFExportError(str(error)) from None
    name = Path(str(model.config.llm)).name
    with atomic_folder(out) as tmp:
        f16 = tmp / "model-f16.gguf"
        write_language_model(lm, vocab, f16, name)
        write_mmproj(model, plan, tmp / MMPROJ, f"{name} mmproj ({plan.tower_kind})")
        for quant in quants:
            if quant != "f16":
                quantize(llama_cpp, f16, tmp / f"model-{quant}.gguf", quant)
        if "f16" not in quants:
            f16.unlink()
        (tmp / TEMPLATE_FILE).write_text(FLATTEN_FOR_LLAMA_CPP + model.tokenizer.chat_template)
        models = {q: {"file": f"model-{q}.gguf", "bytes": (tmp / f"model-{q}.gguf").stat().st_size} for q in quants}
        report = GGUFExport(str(out), MMPROJ, models, (tmp / MMPROJ).stat().st_size, model.tokens_per_image)
        _write(tmp, report)
        if llama_cpp is not None and check:
            _check(model, tmp, report, llama_cpp)
            _write(tmp, report)
    log.info("wrote %s: %s + %s", out, ", ".join(m["file"] for m in report.models.values()), MMPROJ)
    return report


def _write(folder: Path, report: GGUFExport) -> None:
    (folder / REPORT).write_text(json.dumps(asdict(report), indent=1) + "\n")


def _check(model, folder: Path, report: GGUFExport, llama_cpp) -> None:
    """Tokenizer agreement (refused when it differs: the vocabulary would be wrong), the image embeddings of the
    first model file (refused when they differ, but for CLIP's known CLS ordering in llama.cpp) and greedy answers
    (recorded: float16 and quantized weights may move a close call)."""
    image = check_image(model)
    report.answers["minillava"] = model.ask(CHECK_QUESTION, [image], max_new_tokens=CHECK_TOKENS)
    for index, quant in enumerate(report.models):
        llm = load(folder, quant, n_ctx=512)
        if index == 0:
            _check_tokenizer(model, llm)
            report.tokenizer_equal = True
            _check_image_embeddings(model, llm, image, report, llama_cpp.__version__)
        answer = ask(llm, image, CHECK_QUESTION, max_tokens=CHECK_TOKENS)
        report.answers[quant] = {"llama.cpp": answer.text, "prompt_tokens": answer.prompt_tokens,
                                 "equal": answer.text.strip() == report.answers["minillava"].strip()}
        llm.close()
    report.checked = True
    report.llama_cpp = llama_cpp.__version__


def _check_tokenizer(model, llm) -> None:
    for probe in PROBES:
        ours = model.tokenizer(probe, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(probe.encode(), add_bos=False, special=True)
        if ours != theirs:
            raise GGUFExportError(f"llama.cpp tokenizes {probe!r} as {theirs[:20]}..., minillava as {ours[:20]}...")


def _check_image_embeddings(model, llm, image: Image.Image, report: GGUFExport, version: str) -> None:
    theirs = image_embeddings(llm, image)
    with torch.no_grad():
        ours = model.encode_images(model.pixel_values([image]))[0].float().numpy()
    if theirs.shape != ours.shape:
        raise GGUFExportError(f"llama.cpp gives the image {theirs.shape[0]} tokens of width {theirs.shape[1]}, "
                              f"minillava {ours.shape[0]} of width {ours.shape[1]}")
    cosine = (theirs * ours).sum(-1) / (np.linalg.norm(theirs, axis=-1) * np.linalg.norm(ours, axis=-1) + 1e-12)
    report.image_cosine, report.image_max_abs_diff = float(cosine.mean()), float(np.abs(theirs - ours).max())
    if model.vision.num_prefix_tokens:
        report.notes.append(CLS_LAST.format(version=version, cosine=report.image_cosine))
        log.warning(report.notes[-1])
    elif report.image_cosine < MIN_IMAGE_COSINE:
        raise GGUFExportError(f"llama.cpp's image embeddings differ from minillava's (mean cosine "
                              f"{report.image_cosine:.4f}, max difference {report.image_max_abs_diff:.3g})")
