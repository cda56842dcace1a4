"""Run an exported GGUF pair in llama.cpp through llama-cpp-python: the model file, the mmproj file and the chat
template the export wrote (our prompt layout: each image as its own line before the question, in the LM's
template). This is what the export's check and the bench run, and what a user can copy."""

from __future__ import annotations

import base64
import ctypes
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from minillava.export.processor import flatten_content_template

TEMPLATE_FILE = "chat_template.jinja"
REPORT = "gguf_export.json"

# Image parts become "<image url>\n" (llama-cpp-python swaps each url for mtmd's media marker), text parts their
# text; then the language model's own template renders the plain strings.
FLATTEN_FOR_LLAMA_CPP = flatten_content_template(
    ("image_url",), "(part['image_url'] if part['image_url'] is string else part['image_url']['url']) + '\\n'")


class RuntimeMissing(ImportError):
    """llama-cpp-python is not installed."""


_LOG = {"verbose": False, "callback": None, "showing": False}
# ggml's log levels (ggml.h): a CONT message continues the one before it
GGML_WARN, GGML_ERROR, GGML_CONT = 3, 4, 5


def llama_cpp_module():
    try:
        import llama_cpp
        import llama_cpp.llama_chat_format  # noqa: F401  (the multimodal chat handlers)
        import llama_cpp.mtmd_cpp as mtmd
    except ImportError:
        raise RuntimeMissing("running or quantizing a GGUF export needs llama-cpp-python "
                             "(pip install 'minillava[gguf]'; it compiles llama.cpp, ~13 min on 2 cores)") from None
    if _LOG["callback"] is None:
        # llama.cpp, its quantizer and mtmd log every tensor and prompt chunk at INFO: keep warnings and errors.
        @llama_cpp.llama_log_callback
        def log(level: int, text: bytes, user_data) -> None:
            if level != GGML_CONT:
                _LOG["showing"] = _LOG["verbose"] or level in (GGML_WARN, GGML_ERROR)
            if _LOG["showing"]:
                sys.stderr.write(text.decode("utf-8", errors="replace"))

        _LOG["callback"] = log  # ctypes needs the callback kept alive
        for set_log in (llama_cpp.llama_log_set, mtmd.mtmd_log_set, mtmd.mtmd_helper_log_set):
            set_log(log, ctypes.c_void_p(0))
    return llama_cpp


def image_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_handler(folder: str | Path, verbose: bool = False):
    """A llama-cpp-python chat handler for the export in `folder`: its mmproj file and chat template."""
    llama_cpp = llama_cpp_module()
    folder = Path(folder)
    report = json.loads((folder / REPORT).read_text())

    class Handler(llama_cpp.llama_chat_format.Llava15ChatHandler):
        DEFAULT_SYSTEM_MESSAGE = None  # the template adds the LM's own default system turn, if it has one
        CHAT_FORMAT = (folder / TEMPLATE_FILE).read_text()

    return Handler(clip_model_path=str(folder / report["mmproj"]), verbose=verbose)


def load(folder: str | Path, quant: str | None = None, n_ctx: int = 2048, n_threads: int | None = None,
         verbose: bool = False):
    """A `llama_cpp.Llama` for the export in `folder` (`quant`: one of its model files' types; default the first)."""
    llama_cpp = llama_cpp_module()
    _LOG["verbose"] = verbose
    folder = Path(folder)
    report = json.loads((folder / REPORT).read_text())
    models = report["models"]
    quant = quant or next(iter(models))
    if quant not in models:
        raise ValueError(f"{folder} has model files for {sorted(models)}, not {quant!r}")
    return llama_cpp.Llama(model_path=str(folder / models[quant]["file"]), chat_handler=chat_handler(folder, verbose),
                           n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), verbose=verbose)


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def ask(llm, image: Image.Image, question: str, max_tokens: int = 32) -> Answer:
    """One greedy answer about one image, as minillava's `model.ask(question, [image])` asks it."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_uri(image)}},
                                             {"type": "text", "text": question}]}]
    start = time.perf_counter()
    reply = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1,
                                       top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    seconds = time.perf_counter() - start
    usage = reply["usage"]
    return Answer(reply["choices"][0]["message"]["content"] or "", usage["prompt_tokens"],
                  usage["completion_tokens"], seconds)


def image_embeddings(llm, image: Image.Image) -> np.ndarray:
    """What llama.cpp's multimodal library puts in the image's slots: (tokens, width), float32. It preprocesses and
    encodes the image itself, from the PNG bytes, as it does in a chat."""
    handler = llm.chat_handler
    handler._init_mtmd_context(llm)
    mtmd = handler._mtmd_cpp
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    bitmap = handler._create_bitmap_from_bytes(buffer.getvalue())
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd.mtmd_tokenize(handler.mtmd_ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
            raise RuntimeError("llama.cpp could not tokenize the image")
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            if mtmd.mtmd_encode_chunk(handler.mtmd_ctx, chunk) != 0:
                raise RuntimeError("llama.cpp could not encode the image")
            tokens, width = mtmd.mtmd_input_chunk_get_n_tokens(chunk), llm.n_embd()
            output = mtmd.mtmd_get_output_embd(handler.mtmd_ctx)
            return np.ctypeslib.as_array(output, shape=(tokens * width,)).reshape(tokens, width).copy()
        raise RuntimeError("llama.cpp made no image chunk")
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
