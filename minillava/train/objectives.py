"""Training objectives by exact name: what a stage minimises, as a mean loss over the units it counts.

An objective turns a batch into an ObjectiveOutput (mean loss, units, statistics) through the model's forward;
the training loop weighs each micro-batch by its units, so a step's loss is the mean over all units of its
micro-batches and ranks whatever the objective.

- `sft`: next-token cross-entropy over the assistant replies' label tokens (units: label tokens).
- `dpo`: direct preference optimisation on (chosen, rejected) reply pairs against a frozen reference model, the
  stage's starting model (units: pairs); `preference.loss: ipo` for IPO, `label_smoothing` for conservative DPO,
  `sft_weight` for RPO (DPO plus the chosen replies' cross-entropy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minillava.data.collate import Batch
from minillava.data.tokenize import IGNORE_INDEX
from minillava.model.llava import ForwardOutput
from minillava.registry import Registry
from minillava.train.config import Preference, StageConfig

# A forward pass over a batch: (batch, sequence_logps) -> the model's output.
Forward = Callable[..., ForwardOutput]


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # the mean over `units`
    units: int
    stats: dict[str, float] = field(default_factory=dict)  # means over the same units, logged beside the loss


@dataclass(frozen=True)
class Objective:
    name: str
    count: Callable[[Batch], int]  # the units a batch's loss is the mean over
    # (forward, batch, reference forward or None) -> output
    loss: Callable[[Forward, Batch, Forward | None], ObjectiveOutput]
    pairs: bool = False  # trains on preference pairs (data format "preference")
    reference: bool = False  # needs the stage's starting model, frozen, beside the trained one


# A name -> a builder of the objective from its stage's settings.
OBJECTIVES: Registry[Callable[[StageConfig], Objective]] = Registry("training objective")


def build_objective(stage: StageConfig) -> Objective:
    return OBJECTIVES.get(stage.objective)(stage)


def label_tokens(batch: Batch) -> int:
    """The label tokens a batch learns (each predicted from the position before it)."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def _sft_loss(forward: Forward, batch: Batch, reference: Forward | None = None) -> ObjectiveOutput:
    out = forward(batch)
    return ObjectiveOutput(out.loss, out.num_label_tokens)


@OBJECTIVES.register("sft")
def sft(stage: StageConfig | None = None) -> Objective:
    return Objective("sft", label_tokens, _sft_loss)


# -- preference optimisation ----------------------------------------------------------------------------------
def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, options: Preference) -> tuple[torch.Tensor, dict]:
    """Per-pair losses and the rewards behind them, from the replies' log-probabilities (B,) under the policy
    and the reference model.

    sigmoid (DPO, Rafailov et al. 2023): -(1 - s) log sigmoid(beta h) - s log sigmoid(-beta h), with
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected) and s the label smoothing;
    ipo (Azar et al. 2023): (h - 1 / (2 beta))^2 on log-probabilities averaged per token (the caller's inputs).
    """
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    h = chosen - rejected
    beta = options.beta
    if options.loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        s = options.label_smoothing
        losses = -(1 - s) * F.logsigmoid(beta * h) - s * F.logsigmoid(-beta * h)
    rewards = {"chosen": beta * chosen.detach(), "rejected": beta * rejected.detach()}
    return losses, rewards


def pair_count(batch: Batch) -> int:
    return batch.pairs


def _sides(out: ForwardOutput, pairs: int, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logps = out.sequence_logps / out.sequence_tokens.clamp(min=1) if per_token else out.sequence_logps
    return logps[:pairs], logps[pairs:]


def _dpo_loss(options: Preference, forward: Forward, batch: Batch, reference: Forward | None) -> ObjectiveOutput:
    if not batch.pairs or len(batch.input_ids) != 2 * batch.pairs:
        raise ValueError("the dpo objective needs preference batches (chosen rows, then rejected rows)")
    if reference is None:
        raise ValueError("the dpo objective needs the reference model's forward pass")
    per_token = options.loss == "ipo"
    policy = forward(batch, sequence_logps=True)
    policy_chosen, policy_rejected = _sides(policy, batch.pairs, per_token)
    with torch.no_grad():
        reference_chosen, reference_rejected = _sides(reference(batch, sequence_logps=True), batch.pairs, per_token)
    losses, rewards = preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, options)
    nll = -_sides(policy, batch.pairs, per_token=True)[0]  # the chosen replies' per-token cross-entropy
    if options.sft_weight:
        losses = losses + options.sft_weight * nll
    margins = rewards["chosen"] - rewards["rejected"]
    stats = {"reward_accuracy": float((margins > 0).float().mean()), "reward_margin": float(margins.mean()),
             "reward_chosen": float(rewards["chosen"].mean()), "reward_rejected": float(rewards["rejected"].mean()),
             "logp_chosen": float(policy_chosen.detach().mean()),
             "logp_rejected": float(policy_rejected.detach().mean()), "nll_chosen": float(nll.detach().mean())}
    return ObjectiveOutput(losses.mean(), batch.pairs, stats)


@OBJECTIVES.register("dpo")
def dpo(stage: StageConfig) -> Objective:
    options = stage.preference
    return Objective("dpo", pair_count, lambda forward, batch, reference: _dpo_loss(options, forward, batch, reference),
                     pairs=True, reference=True)
