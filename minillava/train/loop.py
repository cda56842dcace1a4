"""The one training loop: every stage is this loop with a different StageConfig."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from minillava.data.collate import Batch
from minillava.data.conversation import Video
from minillava.model import MiniLlava
from minillava.model.language import set_attention
from minillava.model.llava import ForwardOutput
from minillava.paths import atomic_folder
from minillava.train.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from minillava.train.config import StageConfig, TrainConfig, precision_dtype
from minillava.train.data import SkipReport, TrainingSet
from minillava.train.distributed import SINGLE_PROCESS, World, close_world, init_world
from minillava.train.features import FeatureCache, weights_digest
from minillava.train.metrics import MetricsLog, plot_losses
from minillava.train.objectives import ObjectiveOutput, build_objective
from minillava.train.schedule import warmup_schedule
from minillava.train.sharding import clip_gradients, gather_optimizer, gather_trainable, load_trainable, shard
from minillava.train.tuning import apply_tuning, cast_frozen_language_model, finalize, param_groups, trainable_state

log = logging.getLogger(__name__)
DONE = "DONE"


class TrainingStopped(RuntimeError):
    """Training stopped early (a signal, or too many non-finite losses); a checkpoint was written."""


@dataclass
class StageSummary:
    stage: str
    steps: int
    samples: int
    tokens: int
    seconds: float
    final_train_loss: float | None
    final_val_loss: float | None
    skipped: dict
    final_dir: str


def pick_device(name: str, world: World = SINGLE_PROCESS) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", world.local_rank) if name == "cuda" else torch.device(name)


def out_of_memory_advice(stage: StageConfig, step: int, seq_len: int) -> str:
    return (f"stage {stage.name!r}: out of memory at step {step} (batch_size {stage.batch_size}, sequence length "
            f"{seq_len}). Remedies, cheapest first: halve batch_size and double grad_accum (the same global batch: "
            f"stages.{stage.name}.batch_size={max(1, stage.batch_size // 2)} "
            f"stages.{stage.name}.grad_accum={stage.grad_accum * 2}); gradient_checkpointing=true; precision=bf16; "
            f"a smaller max_length; LoRA instead of full tuning of the language model; on several GPUs, torchrun "
            f"with a smaller per-device batch. Continue from the last checkpoint with --resume.")


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)  # the CPU allocator


class StopSignal:
    """SIGTERM / SIGINT ask for a checkpoint at the next step boundary instead of killing the run."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, resume: bool = False) -> list[StageSummary]:
    """Run every stage of a recipe in order (under torchrun: data parallel, rank 0 writes the files)."""
    out = Path(config.output_dir)
    if not resume and out.exists() and any(out.glob("*/checkpoints")):
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another output_dir")
    world = init_world(config.device)
    try:
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        world.barrier()
        summaries = []
        previous: Path | None = None
        for index, stage in enumerate(config.stages):
            stage_dir = out / stage.name
            final = stage_dir / "final"
            if resume and (stage_dir / DONE).exists():
                log.info("stage %s: already finished, skipped", stage.name)
                summaries.append(StageSummary(**json.loads((stage_dir / "summary.json").read_text())))
            else:
                summaries.append(StageRun(config, index, stage_dir, previous, resume, world).run())
            previous = final
        return summaries
    finally:
        close_world(world)


class StageRun:
    def __init__(self, config: TrainConfig, index: int, stage_dir: Path, previous: Path | None, resume: bool,
                 world: World = SINGLE_PROCESS):
        self.config = config
        self.index = index
        self.stage: StageConfig = config.stages[index]
        try:
            self.objective = build_objective(self.stage)
        except KeyError as error:
            raise ValueError(f"stage {self.stage.name!r}: {error.args[0]}") from None
        self.seed = config.seed + index
        self.world = world
        self.dir = stage_dir
        if world.main:
            self.dir.mkdir(parents=True, exist_ok=True)
        world.barrier()
        self.device = pick_device(config.device, world)
        self.checkpoint = latest_checkpoint(stage_dir) if resume else None
        self.previous = previous
        torch.manual_seed(self.seed)
        self.model = self._load_model(previous)
        stage = self.stage
        if stage.max_length:
            self.model.encoder.max_length = stage.max_length
        set_attention(self.model.language_model, stage.attention)
        apply_tuning(self.model, stage)
        # Sharded, the model goes to the device one FSDP group at a time; otherwise whole, now.
        self.sharded = world.distributed and stage.parallel == "fsdp"
        if not self.sharded:
            self.model.to(self.device)
        if stage.precision != "fp32":
            cast_frozen_language_model(self.model, precision_dtype(stage.precision))
        if stage.gradient_checkpointing:
            self.model.language_model.gradient_checkpointing_enable({"use_reentrant": False})
        if stage.compile:
            self.model.language_model.get_decoder().compile(dynamic=True)
        # The module that runs forward passes: the model itself (sharded in place by FSDP), or its
        # DistributedDataParallel wrapper.
        self.runner = self.model
        if self.sharded:
            shard(self.model, stage, self.device, world.size)
        elif world.distributed:
            # Unused parameters are normal: a text-only batch leaves the projector out.
            self.runner = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True, broadcast_buffers=False)
        self.reference = self._reference_model(previous) if self.objective.reference else None
        groups = param_groups(self.model, stage)  # after sharding, which replaces every parameter by a new tensor
        self.params = [p for g in groups for p in g["params"]]
        self.skips = SkipReport()
        pairs = self.objective.pairs
        self.train_set = TrainingSet(stage.data, self.model.encoder, self.skips, pairs)
        self.val_set = TrainingSet(stage.val_data, self.model.encoder, self.skips, pairs) if stage.val_data else None
        self.cache = self._feature_cache() if stage.feature_cache else None
        per_epoch = math.ceil((stage.samples_per_epoch or len(self.train_set)) / (stage.batch_size * world.size))
        self.total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch / stage.grad_accum))
        # Fused AdamW: one kernel over all parameters; on 2 CPU cores it steps all of SmolLM2-135M in 0.13 s
        # against 0.48 s per tensor and 1.39 s foreach (bench/train_throughput.py), where the per-tensor step was
        # a fifth of the demo's stage-2 step. Sharded parameters keep the default.
        fused = not self.sharded and self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay,
                                           fused=fused or None)
        self.scheduler = warmup_schedule(self.optimizer, self.total_steps, stage.warmup_ratio, stage.schedule)
        self.scaler = torch.amp.GradScaler("cuda") if stage.precision == "fp16" else None
        if stage.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"stage {stage.name!r}: fp16 needs CUDA; use bf16 on CPU")
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.samples_seen = self.tokens_seen = 0
        self.seconds = 0.0
        self.bad_in_row = 0
        self.last_loss: float | None = None
        self.last_val: float | None = None
        self._last_len = 0
        self._saved_step: int | None = None  # the step of the latest checkpoint this run wrote
        self._epoch_batches: list[list[int]] | None = None
        if self.checkpoint:
            self._restore(self.checkpoint)
        self.metrics = (MetricsLog(self.dir / "metrics.jsonl", resume_step=self.step if self.checkpoint else 0)
                        if world.main else None)

    # -- set-up -------------------------------------------------------------------------------------------
    def _load_model(self, previous: Path | None) -> MiniLlava:
        source = self.stage.init_from or (str(previous) if previous else None)
        if source:
            return MiniLlava.from_pretrained(source)
        spec = self.config.model
        return MiniLlava.from_components(spec.vision, spec.llm, spec.projector, seed=self.seed,
                                         **spec.options())

    def _reference_model(self, previous: Path | None) -> MiniLlava:
        """The stage's starting model, frozen, for objectives that compare against it (dpo): loaded again from
        its folder, so nothing the stage trains can reach it."""
        if self.sharded:
            raise ValueError(f"stage {self.stage.name!r}: the {self.objective.name} objective runs with ddp or one "
                             "process, not parallel: fsdp")
        if not (self.stage.init_from or previous):
            raise ValueError(f"stage {self.stage.name!r}: the {self.objective.name} objective compares against the "
                             "stage's starting model: give it init_from or an earlier stage")
        reference = self._load_model(previous).eval().requires_grad_(False)
        reference.encoder.max_length = self.model.encoder.max_length
        set_attention(reference.language_model, self.stage.attention)
        reference.to(self.device)
        if self.stage.precision != "fp32":
            cast_frozen_language_model(reference, precision_dtype(self.stage.precision))
        return reference

    def _restore(self, path: Path) -> None:
        weights, state, meta = load_checkpoint(path)
        params = dict(self.model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if set(weights) != trainable:
            raise ValueError(f"{path}: its trainable tensors do not match this stage's (was the recipe changed?)")
        if self.sharded:
            load_trainable(self.model, self.optimizer, weights, state["optimizer"])
        else:
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if isinstance(rng, list):  # one state per rank
            if len(rng) != self.world.size:
                raise ValueError(f"{path}: written by {len(rng)} processes; resume it with the same world size "
                                 f"(now {self.world.size})")
            rng = rng[self.world.rank]
        restore_rng(rng)
        p = state["progress"]
        self.step, self.epoch, self.batch_in_epoch = p["step"], p["epoch"], p["batch_in_epoch"]
        self.samples_seen, self.tokens_seen, self.seconds = p["samples"], p["tokens"], p["seconds"]
        self.skips.counts.update(state["skips"]["counts"])
        self.skips.examples = list(state["skips"]["examples"])
        log.info("stage %s: resumed from %s (step %d of %d)", self.stage.name, path, self.step, self.total_steps)

    def _save(self) -> Path | None:
        """Every rank takes part (their RNG states are gathered, and shards with FSDP); rank 0 writes."""
        rng = self.world.gather(capture_rng())
        weights, optimizer = self._trainable_state()
        self._saved_step = self.step  # on every rank, so all of them skip or take the final save together
        if not self.world.main:
            self.world.barrier()
            return None
        state = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng if self.world.distributed else rng[0],
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "samples": self.samples_seen, "tokens": self.tokens_seen, "seconds": self.seconds},
            "skips": {"counts": dict(self.skips.counts), "examples": list(self.skips.examples)},
        }
        meta = {"stage": self.stage.name, "step": self.step, "total_steps": self.total_steps,
                "config": self.config.to_dict()}
        path = save_checkpoint(self.dir, self.step, weights, state, meta, self.stage.keep_last)
        self.world.barrier()
        return path

    def _trainable_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Whole trainable tensors and optimizer state on rank 0 (sharded, every rank must call this)."""
        if not self.sharded:
            return (trainable_state(self.model), self.optimizer.state_dict()) if self.world.main else ({}, {})
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        weights = {n: t for n, t in gather_trainable(self.model).items() if n in trainable}  # buffers left out
        return weights, gather_optimizer(self.model, self.optimizer)

    def _whole_model(self) -> MiniLlava | None:
        """The trained model as one module on rank 0 (None elsewhere). Sharded, rank 0 builds the stage's
        starting model again and loads the trained tensors into it; every rank must call this."""
        if not self.sharded:
            return self.model if self.world.main else None
        trained = gather_trainable(self.model)
        if not self.world.main:
            return None
        model = self._load_model(self.previous)
        apply_tuning(model, self.stage)
        unexpected = model.load_state_dict(trained, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"stage {self.stage.name!r}: trained tensors missing from the rebuilt model: "
                               f"{unexpected[:5]}")
        return model

    def _log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    # -- data ---------------------------------------------------------------------------------------------
    def _feature_cache(self) -> FeatureCache:
        vision = self.model.vision
        fingerprint = {"vision": self.model.config.to_dict()["vision"], "transform": vision.transform.to_dict(),
                       "class": type(vision).__name__, "weights": weights_digest(vision)}
        images = self.train_set.images() + (self.val_set.images() if self.val_set else [])
        plans = self.train_set.image_plans() + (self.val_set.image_plans() if self.val_set else [])
        if any(plan.views != 1 for plan in plans) or any(isinstance(image, Video) for image in images):
            raise ValueError(f"stage {self.stage.name!r}: the feature cache holds one view per image, and the image "
                             "planner makes several for some images (or frames of videos); set feature_cache: false")
        earlier = [self.dir.parent / stage.name / "feature-cache" for stage in self.config.stages[:self.index]]
        make = lambda writer: FeatureCache(self.dir / "feature-cache", images, fingerprint,  # noqa: E731
                                           (vision.num_tokens, vision.hidden_size), self.stage.feature_cache_dtype,
                                           writer=writer, seeds=earlier)
        cache = make(True) if self.world.main else None
        self.world.barrier()  # rank 0 creates the files, the others open them
        return cache or make(False)

    def _load_images(self, images: list) -> torch.Tensor:
        """A sample's images as the forward pass takes them: pixels, or cached encoder features."""
        if self.cache is None:
            return self.model.pixel_values(images)
        encode = lambda sources: self.model.vision(self.model.pixel_values(sources).to(self.device))  # noqa: E731
        return self.cache.get(images, encode)

    def _make_batch(self, data: TrainingSet, indices: list[int]) -> Batch | None:
        batch = data.make_batch(indices, self._load_images, self.model.tokenizer.pad_token_id,
                                as_features=self.cache is not None)
        return None if batch is None else batch.to(self.device)

    def _next_batch(self) -> Batch:
        """This rank's slice of the next global batch; a global batch that leaves any rank empty is skipped."""
        stage = self.stage
        while True:
            if self._epoch_batches is None:
                self._epoch_batches = self.train_set.epoch_batches(
                    self.epoch, self.seed, stage.batch_size * self.world.size, stage.samples_per_epoch,
                    stage.group_by_length)
            if self.batch_in_epoch >= len(self._epoch_batches):
                self.epoch, self.batch_in_epoch, self._epoch_batches = self.epoch + 1, 0, None
                continue
            indices = self.world.shard(self._epoch_batches[self.batch_in_epoch])
            self.batch_in_epoch += 1
            batch = self._make_batch(self.train_set, indices) if indices else None
            if self.world.all(batch is not None):
                return batch

    @staticmethod
    def _call(module: torch.nn.Module, batch: Batch, sequence_logps: bool = False) -> ForwardOutput:
        return module(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                      vision_features=batch.vision_features, block_ids=batch.block_ids,
                      position_ids=batch.position_ids, sequence_logps=sequence_logps, image_plans=batch.image_plans)

    def _forward(self, batch: Batch, sequence_logps: bool = False) -> ForwardOutput:
        with self._autocast():
            return self._call(self.runner, batch, sequence_logps)

    def _reference_forward(self, batch: Batch, sequence_logps: bool = False) -> ForwardOutput:
        with self._autocast():
            return self._call(self.reference, batch, sequence_logps)

    def _objective(self, forward, batch: Batch) -> ObjectiveOutput:
        return self.objective.loss(forward, batch, self._reference_forward if self.reference is not None else None)

    def _autocast(self):
        stage = self.stage
        if stage.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=precision_dtype(stage.precision))

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> StageSummary:
        stage = self.stage
        interactive = sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=stage.name, unit="step",
                   disable=not (interactive and self.world.main), dynamic_ncols=True)
        window = {"samples": 0, "tokens": 0, "start": time.perf_counter(), "stats": []}
        self.model.train()
        with StopSignal() as stop:
            while self.step < self.total_steps:
                started = time.perf_counter()
                try:
                    loss, grad_norm, samples, tokens, stats = self._train_step()
                except RuntimeError as error:
                    if not _is_out_of_memory(error):
                        raise
                    bar.close()
                    raise TrainingStopped(out_of_memory_advice(stage, self.step + 1, self._last_len)) from error
                self.seconds += time.perf_counter() - started
                window["samples"] += samples
                window["tokens"] += tokens
                if loss is None:
                    continue
                window["stats"].append(stats)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.step % stage.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window["start"]
                    record = {"step": self.step, "epoch": self.epoch, "loss": round(loss, 6),
                              "lr": self.scheduler.get_last_lr()[0], "grad_norm": round(grad_norm, 6),
                              "samples_per_s": round(window["samples"] / elapsed, 3),
                              "tokens_per_s": round(window["tokens"] / elapsed, 1)}
                    # The objective's statistics (dpo: reward accuracy, margins), averaged over the logged steps.
                    steps = window["stats"]
                    record |= {name: round(sum(s[name] for s in steps) / len(steps), 6) for name in stats}
                    self._log(record)
                    if not interactive and self.world.main:
                        log.info("%s step %d/%d loss %.4f lr %.2e %.1f samples/s", stage.name, self.step,
                                 self.total_steps, loss, record["lr"], record["samples_per_s"])
                    window = {"samples": 0, "tokens": 0, "start": time.perf_counter(), "stats": []}
                if stage.eval_every and self.step % stage.eval_every == 0 and self.step < self.total_steps:
                    self._validate()
                    self._run_evals()
                if stage.save_every and self.step % stage.save_every == 0:
                    self._save()
                if stop.received is not None:
                    path = self._save()
                    bar.close()
                    raise TrainingStopped(f"stopped by signal {stop.received} at step {self.step}; "
                                          f"checkpoint {path}; continue with --resume")
        bar.close()
        self._validate()
        self._run_evals()
        if self._saved_step != self.step:  # save_every may have just written it (stage 2's holds 1.6 GB)
            self._save()
        return self._finish()

    def _train_step(self) -> tuple[float | None, float, int, int, dict[str, float]]:
        """One optimizer step over grad_accum batches (on every rank); the loss is the mean over all their units
        (label tokens, pairs), so the step does not depend on how the global batch is split into micro-batches
        and ranks. The objective's statistics come back as means over the same units."""
        stage = self.stage
        self.optimizer.zero_grad(set_to_none=True)
        batches = [self._next_batch() for _ in range(stage.grad_accum)]
        self._last_len = max(b.input_ids.shape[1] for b in batches)
        counts = [self.objective.count(b) for b in batches]
        total = max(1.0, self.world.sum(sum(counts))[0])
        loss_sum = 0.0
        stat_sums: dict[str, float] = {}
        for k, (batch, count) in enumerate(zip(batches, counts, strict=True)):
            last = k == len(batches) - 1
            # DDP and FSDP average gradients over ranks; scaling by the world size turns that average into the sum.
            # DDP reduces on the last micro-batch only; FSDP on each, so gradients stay sharded (see sharding.py).
            accumulate = not last and self.world.distributed and not self.sharded
            sync = self.runner.no_sync() if accumulate else contextlib.nullcontext()
            with sync:
                out = self._objective(self._forward, batch)
                loss = out.loss * (count * self.world.size / total)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += float(loss.detach()) / self.world.size
            for name, value in out.stats.items():
                stat_sums[name] = stat_sums.get(name, 0.0) + value * count
        samples = sum(len(b.input_ids) for b in batches)
        tokens = sum(int(b.attention_mask.sum()) for b in batches)
        loss_sum, samples, tokens, *stat_values = self.world.sum(loss_sum, samples, tokens, *stat_sums.values())
        samples, tokens = int(samples), int(tokens)
        stats = {name: value / total for name, value in zip(stat_sums, stat_values, strict=True)}
        self.samples_seen += samples
        self.tokens_seen += tokens
        if not math.isfinite(loss_sum):
            self.bad_in_row += 1
            self.skips.counts["non-finite loss (step skipped)"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.bad_in_row >= stage.max_bad_steps:
                path = self._save()
                raise TrainingStopped(f"{self.bad_in_row} non-finite losses in a row at step {self.step}: lower the "
                                      f"learning rate or check the data; checkpoint {path}")
            return None, 0.0, samples, tokens, stats
        self.bad_in_row = 0
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = clip_gradients(self.params, stage.max_grad_norm or float("inf"))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.last_loss = loss_sum
        return loss_sum, norm, samples, tokens, stats

    @torch.no_grad()
    def _validate(self) -> None:
        if self.val_set is None:
            return
        self.model.eval()
        total_loss, total_tokens = 0.0, 0
        stat_sums: dict[str, float] = {}
        order = self.world.shard(list(range(len(self.val_set))))
        starts = range(0, len(order), self.stage.batch_size)
        # Sharded, every forward pass gathers weights with all ranks: each runs as many as the busiest rank.
        rounds = max(self.world.gather(len(starts))) if self.sharded else len(starts)
        for i in range(rounds):
            indices = order[starts[i] : starts[i] + self.stage.batch_size] if i < len(starts) else []
            batch = self._make_batch(self.val_set, indices) if indices else None
            if batch is None:
                if self.sharded:
                    self._idle_forward()
                continue
            with self._autocast():  # the bare model: no gradient synchronisation to take part in
                out = self._objective(partial(self._call, self.model), batch)
            total_loss += float(out.loss) * out.units
            total_tokens += out.units
            for name, value in out.stats.items():
                stat_sums[name] = stat_sums.get(name, 0.0) + value * out.units
        self.model.train()
        total_loss, total_tokens, *stat_values = self.world.sum(total_loss, total_tokens, *stat_sums.values())
        if total_tokens:
            self.last_val = total_loss / total_tokens
            stats = {f"val_{name}": round(value / total_tokens, 6)
                     for name, value in zip(stat_sums, stat_values, strict=True)}
            self._log({"step": self.step, "val_loss": round(self.last_val, 6), **stats})
            if self.world.main:
                log.info("%s step %d: validation loss %.4f", self.stage.name, self.step, self.last_val)

    def _idle_forward(self) -> None:
        """A one-token forward pass with no loss: this rank's part in the others' weight gathering."""
        ids = torch.full((1, 1), self.model.tokenizer.pad_token_id, device=self.device)
        with self._autocast():
            self.model(ids)

    @torch.no_grad()
    def _run_evals(self) -> None:
        """The recipe's generation-based evaluations, on rank 0 (the others wait); headline scores are logged."""
        if not self.stage.evals:
            return
        if self.world.main:
            from minillava.eval.data import load_samples
            from minillava.eval.runner import evaluate
            from minillava.eval.tasks import TASKS

            record = {"step": self.step}
            for source in self.stage.evals:
                task = TASKS.get(source.task)
                samples = load_samples(source.path, source.image_root, source.limit)
                with self._autocast():
                    result = evaluate(self.model, task, samples, batch_size=self.stage.batch_size, progress=False,
                                      post_prompt=source.post_prompt)
                name = source.name or f"{Path(source.path).stem}-{task.name}"
                record[f"{name}/{task.headline}"] = round(result.metrics[task.headline], 6)
                log.info("%s step %d: %s %s %.4f", self.stage.name, self.step, name, task.headline,
                         result.metrics[task.headline])
            self._log(record)
        self.world.barrier()

    def _finish(self) -> StageSummary:
        final = self.dir / "final"
        summary = StageSummary(self.stage.name, self.step, self.samples_seen, self.tokens_seen, round(self.seconds, 2),
                               self.last_loss, self.last_val, self.skips.to_dict(), str(final))
        if self.cache is not None and self.world.main:
            log.info("%s: feature cache %s holds %d images (%d reads, %d encodes this run)", self.stage.name,
                     self.cache.folder, len(self.cache), self.cache.hits, self.cache.misses)
        model = self._whole_model()
        if not self.world.main:
            self.world.barrier()
            return summary
        model = finalize(model, self.stage)
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp)
        plot_losses(self.dir / "metrics.jsonl", self.dir / "loss.png", title=f"{self.stage.name}")
        (self.dir / "summary.json").write_text(json.dumps(asdict(summary), indent=1) + "\n")
        (self.dir / DONE).write_text("ok\n")
        self.world.barrier()
        log.info("stage %s: %d steps, %d samples in %.1f s; %d samples skipped; model in %s", self.stage.name,
                 self.step, self.samples_seen, self.seconds, self.skips.total, final)
        return summary
