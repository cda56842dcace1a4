"""Training data: sources mixed by weight, tokenized once, bad samples skipped and counted, never lost."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from minillava.data.collate import Batch, LengthGroupedSampler, collate
from minillava.data.conversation import SampleError, Video
from minillava.data.fashion import synthesize_fashion
from minillava.data.formats import load_conversations
from minillava.data.image_plan import ImagePlan
from minillava.data.images import ImageError
from minillava.data.motion import synthesize_motion
from minillava.data.small_objects import synthesize_small_objects
from minillava.data.synth import synthesize_shapes
from minillava.data.tokenize import ConversationEncoder, EncodedPair, EncodedSample
from minillava.train.config import DataSource

MAX_EXAMPLES = 20


@dataclass
class SkipReport:
    """Every skipped sample is counted by reason; the first few are kept with their full message."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, error: SampleError, kind: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


# Generators a recipe's `synth:` can name; each writes its files into the data file's folder.
GENERATORS: dict[str, Callable[..., Path]] = {"shapes": synthesize_shapes, "fashion": synthesize_fashion,
                                              "small-objects": synthesize_small_objects, "motion": synthesize_motion}


def ensure_synthetic(source: DataSource) -> None:
    """Generate a source's files (into the data file's folder) when they are not there yet."""
    if source.synth is None or Path(source.path).exists():
        return
    options = dict(source.synth)
    kind = options.pop("kind", "shapes")
    if kind not in GENERATORS:
        raise ValueError(f"{source.path}: unknown synthetic data kind {kind!r}; known: {sorted(GENERATORS)}")
    GENERATORS[kind](Path(source.path).parent, show_progress=True, **options)
    if not Path(source.path).exists():
        raise ValueError(f"{source.path}: the {kind} generator did not write this file (shapes and fashion write "
                         f"captions.json, questions.json, conversations.json, all-questions.json and, with "
                         f"preferences: true, preferences.json; small-objects writes train.json and held-out.json; "
                         f"motion writes motion.json, captions.json and questions.json)")


class TrainingSet:
    """`pairs`: the samples are preference pairs (a preference objective), batched chosen sides then rejected."""

    def __init__(self, sources: Sequence[DataSource], encoder: ConversationEncoder, skips: SkipReport,
                 pairs: bool = False):
        self.sources = list(sources)
        self.skips = skips
        self.pairs = pairs
        self.samples: list[EncodedSample | EncodedPair] = []
        self.unreadable: set[int] = set()  # samples whose images failed once: skipped, counted once
        self.by_source: list[list[int]] = []
        for source in self.sources:
            ensure_synthetic(source)
            conversations, errors = load_conversations(source.path, source.format, source.image_root)
            for error in errors:
                skips.add(error, "invalid record")
            indices = []
            for conversation in conversations:
                if source.video_frames is not None:
                    conversation.images = [replace(m, frames=source.video_frames) if isinstance(m, Video) else m
                                           for m in conversation.images]
                try:
                    sample = (encoder.encode_preference(conversation) if pairs else
                              encoder.encode(conversation, independent_turns=source.turns == "independent"))
                except SampleError as error:
                    skips.add(SampleError(error.reason, source=source.path, sample_id=conversation.id), "encoding")
                    continue
                indices.append(len(self.samples))
                self.samples.append(sample)
            if not indices:
                raise ValueError(f"{source.path}: no usable sample (see the skipped samples above)")
            self.by_source.append(indices)

    def __len__(self) -> int:
        return len(self.samples)

    def epoch_order(self, epoch: int, seed: int, samples_per_epoch: int | None) -> list[int]:
        """The samples of one epoch: each source's share by weight, cycling through it in a seeded order."""
        total = samples_per_epoch or len(self.samples)
        weights = [s.weight for s in self.sources]
        counts = [round(total * w / sum(weights)) for w in weights]
        order: list[int] = []
        for k, (indices, count) in enumerate(zip(self.by_source, counts, strict=True)):
            rng = random.Random(f"{seed}:{epoch}:{k}")
            drawn: list[int] = []
            while len(drawn) < count:
                cycle = list(indices)
                rng.shuffle(cycle)
                drawn += cycle
            order += drawn[:count]
        return order

    def epoch_batches(self, epoch: int, seed: int, batch_size: int, samples_per_epoch: int | None,
                      group_by_length: bool) -> list[list[int]]:
        order = self.epoch_order(epoch, seed, samples_per_epoch)
        if group_by_length:
            sampler = LengthGroupedSampler([self.samples[i].length for i in order], batch_size, seed=seed)
            sampler.set_epoch(epoch)
            return [[order[j] for j in batch] for batch in sampler]
        rng = random.Random(f"{seed}:{epoch}:order")
        rng.shuffle(order)
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def images(self) -> list:
        return [image for sample in self.samples for image in sample.images]

    def image_plans(self) -> list[ImagePlan]:
        return [plan for sample in self.samples for plan in sample.image_plans]

    def make_batch(self, indices: Sequence[int], load: Callable[[list], torch.Tensor], pad_token_id: int,
                   as_features: bool = False) -> Batch | None:
        """Load a batch's images (pixels, or encoder features when `as_features`); a sample whose image fails
        is skipped and counted, not fatal."""
        kept, images = [], []
        for i in indices:
            sample = self.samples[i]
            if i in self.unreadable:
                continue
            try:
                images.append(load(sample.images) if sample.images else None)
            except (ImageError, SampleError, OSError) as error:
                self.unreadable.add(i)
                self.skips.add(SampleError(str(error)), "image")
                continue
            kept.append(sample)
        if not kept:
            return None
        if self.pairs:  # both sides of a pair see the same images, loaded once
            kept, images = [p.chosen for p in kept] + [p.rejected for p in kept], images + images
        batch = collate([s.input_ids for s in kept], [s.labels for s in kept], pad_token_id, images,
                        blocks=[s.blocks for s in kept], image_plans=[s.image_plans for s in kept])
        batch.pairs = len(kept) // 2 if self.pairs else 0
        if as_features:
            batch.vision_features, batch.pixel_values = batch.pixel_values, None
        return batch
