"""Our generation loop: KV cache, batched prompts with left padding, streaming text, stop strings."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from minillava.data.collate import Batch
from minillava.data.conversation import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Conversation, ImageSource, Turn
from minillava.model.kv_cache import PreallocatedCache
from minillava.model.sampling import GenerationConfig, choose_next


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int


def build_prompt(text: str, images: Sequence[ImageSource] = (), system: str | None = None) -> Conversation:
    """A one-turn conversation; images (and videos) go first unless the text places its own `<image>` (or
    `<video>`) markers."""
    text = text.replace(VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER)
    if images and IMAGE_PLACEHOLDER not in text:
        text = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in images) + text
    turns = ([Turn("system", system)] if system else []) + [Turn("user", text)]
    return Conversation(turns=turns, images=list(images))


@dataclass
class _Row:
    """One sequence's text state: what has been shown, and whether it has ended."""

    token_ids: list[int] = field(default_factory=list)
    shown: str = ""
    finish_reason: str | None = None


class GenerationRun:
    """Iterate to get each step's new text per prompt (empty strings for none); then read `.results`.

    Text is only shown once it cannot turn out to be part of a stop string or of an unfinished character.
    """

    def __init__(self, model, batch: Batch, config: GenerationConfig):
        self.model = model
        self.batch = batch.to(model.device)
        self.config = config
        tokenizer = model.tokenizer
        self.tokenizer = tokenizer
        self.stop_ids = {i for i in (tokenizer.eos_token_id, model.encoder.end_of_turn_id) if i is not None}
        self.rows = [_Row() for _ in range(len(batch.input_ids))]
        self.prompt_tokens = batch.attention_mask.sum(-1).tolist()
        self.results: list[Generation] = []

    def __iter__(self) -> Iterator[list[str]]:
        for tokens in self._tokens():
            yield [self._advance(row, token) for row, token in zip(self.rows, tokens.tolist(), strict=True)]
            if all(row.finish_reason for row in self.rows):
                break
        self.results = [
            Generation(row.shown, row.token_ids, row.finish_reason or "length", n)
            for row, n in zip(self.rows, self.prompt_tokens, strict=True)
        ]

    def _advance(self, row: _Row, token: int) -> str:
        if row.finish_reason:
            return ""
        if token in self.stop_ids:
            row.finish_reason = "stop"
            return self._show(row, self._text(row), final=True)
        row.token_ids.append(token)
        text = self._text(row)
        for stop in self.config.stop:
            at = text.find(stop, max(0, len(row.shown) - len(stop)))
            if at != -1:
                row.finish_reason = "stop"
                return self._show(row, text[:at], final=True)
        if len(row.token_ids) >= self.config.max_new_tokens:
            row.finish_reason = "length"
            return self._show(row, text, final=True)
        return self._show(row, text, final=False)

    def _text(self, row: _Row) -> str:
        return self.tokenizer.decode(row.token_ids, skip_special_tokens=True)

    def _show(self, row: _Row, text: str, final: bool) -> str:
        if not final:
            safe = len(text) - (1 if text.endswith("\ufffd") else 0)
            for stop in self.config.stop:  # hold back a tail that may be the start of a stop string
                for n in range(min(len(stop) - 1, safe), 0, -1):
                    if text[:safe].endswith(stop[:n]):
                        safe -= n
                        break
            text = text[:safe]
        if not text.startswith(row.shown):  # a re-tokenised tail changed earlier text; show nothing new
            return ""
        delta, row.shown = text[len(row.shown):], text
        return delta

    @torch.inference_mode()
    def _tokens(self) -> Iterator[torch.Tensor]:
        model, config = self.model, self.config
        lm = model.language_model
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=model.device).manual_seed(config.seed)
        ids, mask = self.batch.input_ids, self.batch.attention_mask
        embeds = model.embed(ids, self.batch.pixel_values, image_plans=self.batch.image_plans)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        vocab = lm.get_output_embeddings().weight.shape[0]
        seen = torch.zeros(len(ids), vocab, dtype=torch.bool, device=ids.device)
        rows, cols = ((mask == 1) & (ids < vocab)).nonzero(as_tuple=True)  # prompt text, not pads or slots
        seen[rows, ids[rows, cols]] = True
        finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        pad = self.tokenizer.pad_token_id
        cache = PreallocatedCache(ids.shape[1] + config.max_new_tokens) if config.use_cache else None
        cache_kwarg = {cache_keyword(lm): cache}
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **cache_kwarg,
                 use_cache=config.use_cache, logits_to_keep=1)
        for _ in range(config.max_new_tokens):
            token = choose_next(out.logits[:, -1], seen, config, generator)
            token = token.masked_fill(finished, pad)
            yield token
            finished |= torch.tensor([row.finish_reason is not None for row in self.rows], device=ids.device)
            seen[torch.arange(len(token)), token] = True
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            next_position = positions[:, -1:] + 1
            positions = torch.cat([positions, next_position], dim=1)
            if config.use_cache:
                out = lm(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                         **cache_kwarg, use_cache=True)
            else:
                embeds = torch.cat([embeds, lm.get_input_embeddings()(token[:, None])], dim=1)
                out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                         logits_to_keep=1)


def cache_keyword(lm) -> str:
    """The forward's name for the KV cache: transformers 5.24 renamed `past_key_values` to `cache` (the old
    name warns on every call until it goes in 5.40); earlier 5.x releases and some architectures know only it."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def generate(model, conversations: Sequence[Conversation], config: GenerationConfig | None = None
             ) -> list[Generation]:
    run = stream(model, conversations, config)
    for _ in run:
        pass
    return run.results


def stream(model, conversations: Sequence[Conversation], config: GenerationConfig | None = None
           ) -> GenerationRun:
    batch = model.prepare(conversations, add_generation_prompt=True, left_pad=True)
    return GenerationRun(model, batch, config or GenerationConfig())
