"""An lmms-eval model plugin, so the field's standard benchmarks run on a minillava model folder.

    pip install lmms-eval      # in an environment of its own: it pulls torchvision, timm, ...
    pip install -e /path/to/minillava --no-deps
    python -m lmms_eval --model minillava --model_args pretrained=RUN/instruct/final --tasks pope --batch_size 8

minillava's pyproject registers `manifest` under the `lmms_eval.models` entry point. This module imports without
lmms-eval: the class lmms-eval loads, `MiniLlavaLmms`, is built on first access from `LmmsMethods` (all the logic)
and lmms-eval's `lmms` base class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import torch

from minillava.data.conversation import IMAGE_PLACEHOLDER, Conversation
from minillava.model.generation import build_prompt
from minillava.model.sampling import GenerationConfig

log = logging.getLogger(__name__)
MODEL_ID = "minillava"
CLASS_NAME = "MiniLlavaLmms"
MAX_ROUNDS = 64  # a guard against a multi-round task that never signals its end
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def manifest():
    """The `lmms_eval.models` entry point's payload (lmms-eval 0.7: a ModelManifest)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.{CLASS_NAME}")


def generation_config(gen_kwargs: dict, default_max_new_tokens: int) -> GenerationConfig:
    """lmms-eval generation kwargs (until, max_new_tokens, temperature, do_sample, top_p) -> GenerationConfig."""
    until = gen_kwargs.get("until") or []
    stop = [until] if isinstance(until, str) else [str(s) for s in until]
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    if gen_kwargs.get("do_sample") is False:
        temperature = 0.0
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        log.warning("minillava generates without beam search; num_beams=%s is ignored", gen_kwargs["num_beams"])
    top_p = gen_kwargs.get("top_p")
    return GenerationConfig(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens),
                            temperature=temperature, top_p=float(top_p) if top_p else 1.0, stop=stop)


def flatten_visuals(visuals) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, list | tuple):
        return [visuals]
    return [v for item in visuals for v in flatten_visuals(item)]


def make_prompt(context: str, images: Sequence) -> Conversation:
    """A user turn with the images; the context's own `<image>` markers are kept only when they match."""
    if context.count(IMAGE_PLACEHOLDER) != len(images):
        context = context.replace(IMAGE_PLACEHOLDER, "").strip()
    return build_prompt(context, list(images))


class LmmsMethods:
    """generate_until, loglikelihood and generate_until_multi_round for a MiniLlava model."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, model=None, dtype: str = "float32", device: str = "cpu",
                 batch_size: int | str = 1, max_new_tokens: int | str = 256, **unused) -> None:
        super().__init__()
        if unused:
            log.info("minillava plugin ignores model_args %s", sorted(unused))
        if model is None:
            if pretrained is None:
                raise ValueError("the minillava plugin needs model_args pretrained=<model folder>")
            from minillava.model import MiniLlava

            model = MiniLlava.from_pretrained(pretrained, dtype=DTYPES[str(dtype)]).to(device)
        self.model = model.eval()
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if not hasattr(self, "task_dict"):
            self.task_dict = {}

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _doc(self, task: str, split: str, doc_id):
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Callable, task: str, split: str, doc_id) -> list:
        return flatten_visuals(doc_to_visual(self._doc(task, split, doc_id)))

    # -- generate_until -----------------------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        """Each request's args: (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""
        args = [r.args for r in requests]
        out: list[str | None] = [None] * len(args)
        groups: dict[str, list[int]] = {}
        for i, a in enumerate(args):  # one batch shares one generation config
            groups.setdefault(json.dumps(a[1], sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            config = generation_config(dict(args[indices[0]][1]), self.max_new_tokens)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = [make_prompt(args[i][0], self._visuals(args[i][2], args[i][4], args[i][5], args[i][3]))
                           for i in chunk]
                for i, result in zip(chunk, self.model.generate(prompts, config), strict=True):
                    out[i] = result.text
        return [text or "" for text in out]

    # -- loglikelihood ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def continuation_logprob(self, context: str, continuation: str, images: Sequence) -> tuple[float, bool]:
        """(sum of log-probabilities of the continuation's tokens after the prompted context, whether greedy
        decoding would produce exactly those tokens)."""
        model = self.model
        batch = model.prepare([make_prompt(context, images)], add_generation_prompt=True)
        target = model.tokenizer(continuation, add_special_tokens=False, return_tensors="pt").input_ids
        if target.shape[1] == 0:
            return 0.0, True
        ids = torch.cat([batch.input_ids, target], dim=1).to(model.device)
        pixels = None if batch.pixel_values is None else batch.pixel_values.to(model.device)
        logits = model(ids, torch.ones_like(ids), None, pixels, return_logits=True,
                       image_plans=batch.image_plans).logits
        start = batch.input_ids.shape[1]
        predicted = logits[0, start - 1 : -1].float().log_softmax(-1)
        target = target[0].to(predicted.device)
        logprob = predicted.gather(-1, target[:, None]).sum()
        return float(logprob), bool((predicted.argmax(-1) == target).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Each request's args: (context, doc_to_target or continuation, doc_to_visual, doc_id, task, split)."""
        out = []
        for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            out.append(self.continuation_logprob(context, continuation,
                                                 self._visuals(doc_to_visual, task, split, doc_id)))
        return out

    # -- generate_until_multi_round -----------------------------------------------------------------------
    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Each request's args: (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split).

        Round 0 answers the context; each later round asks the task's doc_to_text(doc, previous_output=...,
        round_idx=..., previous_round_info=...) for (visuals, context, terminal, outputs so far, info) and
        stops when it says terminal. Returns every round's reply per request.
        """
        out = []
        for context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split in (r.args for r in requests):
            config = generation_config(dict(gen_kwargs), self.max_new_tokens)
            config.stop = []  # rounds end at the end of the reply; a task's `until` applies to single rounds
            doc = self._doc(task, split, doc_id)
            images = flatten_visuals(doc_to_visual(doc))
            replies: list[str] = []
            info = None
            for round_idx in range(MAX_ROUNDS):
                if round_idx:
                    visuals, context, terminal, previous, info = doc_to_text(
                        doc, previous_output=list(replies), round_idx=round_idx, previous_round_info=info)
                    if terminal:
                        break
                    replies = list(previous) if previous is not None else replies
                    images = flatten_visuals(visuals)
                replies.append(self.model.generate([make_prompt(context, images)], config)[0].text)
            out.append(replies)
        return out


_built: type | None = None


def _build_class() -> type:
    from lmms_eval.api.model import lmms

    class MiniLlavaLmms(LmmsMethods, lmms):
        __doc__ = LmmsMethods.__doc__

    MiniLlavaLmms.__module__ = __name__
    return MiniLlavaLmms


def __getattr__(name: str):
    """`MiniLlavaLmms`: LmmsMethods on lmms-eval's own base class, built when lmms-eval asks for it."""
    global _built
    if name != CLASS_NAME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _built is None:
        _built = _build_class()
    return _built
