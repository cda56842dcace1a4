"""The language model's tokenizer as llama.cpp's GGUF vocabulary: byte-level BPE tokens, merges, token types,
special ids, the pre-tokenizer llama.cpp must use to split text as ours does, and the chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gguf import GGUFWriter, TokenType
from transformers import PreTrainedTokenizerBase

# The text splitting (tokenizer.json's pre_tokenizer) of each byte-level BPE family, by llama.cpp's name for it.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


class VocabError(ValueError):
    """The tokenizer is one llama.cpp cannot reproduce; the message says what it is."""


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str  # llama.cpp's pre-tokenizer name
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    chat_template: str | None

    def write(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_token_merges(self.merges)
        for add, value in ((writer.add_bos_token_id, self.bos_id), (writer.add_eos_token_id, self.eos_id),
                           (writer.add_pad_token_id, self.pad_id), (writer.add_unk_token_id, self.unk_id)):
            if value is not None:
                add(value)
        # Our encoder adds no special tokens beyond what the chat template writes; neither may llama.cpp.
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for the text splitting of a tokenizer.json `pre_tokenizer`, or VocabError."""
    def byte_level(step: dict, regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == regex \
            and not step.get("add_prefix_space", False)

    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer and pre_tokenizer.get("type") == "Sequence" \
        else [pre_tokenizer] if pre_tokenizer else []
    if len(steps) == 1 and byte_level(steps[0], regex=True):
        return "gpt-2"
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") \
            and byte_level(steps[1], regex=True):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and byte_level(steps[1], regex=False):
        pattern = steps[0].get("pattern", {}).get("Regex")
        for name, known in (("qwen2", QWEN2_PATTERN), ("llama-bpe", LLAMA3_PATTERN)):
            if pattern == known:
                return name
    raise VocabError(f"the tokenizer splits text with {json.dumps(pre_tokenizer)[:300]}, which matches none of "
                     f"llama.cpp's byte-level BPE pre-tokenizers minillava knows (gpt-2, smollm, qwen2, llama-bpe)")


def build_vocab(tokenizer: PreTrainedTokenizerBase, n_vocab: int, chat_template: str | None) -> Vocab:
    """The vocabulary for an LM with `n_vocab` embedding rows: ids past the tokenizer are padding entries, and
    tokenizer ids past the rows (our `<image>` placeholder, which the LM never embeds) are left out."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabError(f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer; llama.cpp's vocabulary "
                         f"is written from tokenizer.json")
    data = json.loads(backend.to_str())
    model = data["model"]
    # NFC (Qwen2's) leaves the composed text people type unchanged; llama.cpp applies no normalizer.
    normalizer = (data.get("normalizer") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or normalizer not in (None, "NFC") \
            or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise VocabError("only byte-level BPE tokenizers (GPT-2, SmolLM, Qwen2, Llama 3 families) export to GGUF "
                         f"here; this one is {model.get('type')} with normalizer {data.get('normalizer')} and "
                         f"decoder {(data.get('decoder') or {}).get('type')}")
    pre = pre_tokenizer_name(data.get("pre_tokenizer"))
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {entry["id"]: entry for entry in data.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(n_vocab):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index]["content"])
            types.append(TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]

    def kept(token_id: int | None) -> int | None:
        return token_id if token_id is not None and token_id < n_vocab else None

    return Vocab(tokens, [int(t) for t in types], merges, pre, kept(tokenizer.bos_token_id),
                 kept(tokenizer.eos_token_id), kept(tokenizer.pad_token_id), kept(tokenizer.unk_token_id),
                 chat_template)
