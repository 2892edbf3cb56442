"""`make_deploy_module`: strip, fold, verify each step, and report what was removed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models.profile import count_macs, count_params
from edgekd.names import LOGITS_NAME
from edgekd.surgery.fold import FOLD_MODES, fold_dual_head, read_mix
from edgekd.surgery.strip import list_training_only_modules, strip_aux_heads
from edgekd.surgery.verify import reference_outputs, verify_fold, verify_logit_fold, verify_strip
from edgekd.train.model import TrainingModel


@dataclass
class SurgeryReport:
    """What surgery did and how it was proven. MACs are per image (conv + linear)."""

    fold: Optional[str]
    alpha: Optional[float]
    beta: Optional[float]
    output_kind: str
    removed_modules: list[str]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def removed_params(self) -> int:
        return self.params_before - self.params_after

    @property
    def removed_macs(self) -> int:
        return self.macs_before - self.macs_after

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "removed_params": self.removed_params, "removed_macs": self.removed_macs}

    def summary(self) -> str:
        mods = ", ".join(self.removed_modules) or "nothing"
        return (f"surgery: removed {mods}; params {self.params_before:,} -> {self.params_after:,} "
                f"(-{self.removed_params:,}), MACs {self.macs_before:,} -> {self.macs_after:,} "
                f"(-{self.removed_macs:,})"
                + (f"; fold {self.fold} (a={self.alpha:g}, b={self.beta:g})" if self.fold else ""))


class _AllHeads(nn.Module):
    """Runs every head of a training model: what a naive export would compute."""

    def __init__(self, model: TrainingModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.heads(x).values())


def resolve_fold(model: TrainingModel, fold: Optional[str]) -> Optional[str]:
    """Default fold is `exact` for a dual-head model; any fold on a single-head model is an error."""
    if fold is not None and fold not in FOLD_MODES:
        raise EdgekdError(f"unknown fold mode {fold!r}; choose one of {', '.join(FOLD_MODES)}")
    if model.kd_head is None:
        if fold is not None:
            raise EdgekdError(f"--fold {fold} needs a dual-head (DHO) checkpoint; this checkpoint has a single head "
                              f"(omit --fold)")
        return None
    return fold or "exact"


def make_deploy_module(model: TrainingModel, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                       fold: Optional[str] = None, min_agreement: float = 99.0,
                       max_accuracy_drop: float = 1.0) -> tuple[nn.Module, SurgeryReport]:
    """Turn a training model into its deploy module, proving every step on the images `x`.

    Args:
        model: the trained `TrainingModel` (CPU, eval mode is set here).
        x: real input images, normalised float (N, C, H, W), from the run's dataset.
        y: their labels (used by the `logit` fold's accuracy gate).
        fold: exact | logit | ce | kd for a dual-head model (default exact); None otherwise.
        min_agreement, max_accuracy_drop: the `logit` fold's gate (percent, points).

    Raises:
        EdgekdError: the fold mode does not match the model. GateError: a check failed.
    """
    model = model.eval()
    fold = resolve_fold(model, fold)
    input_shape = tuple(x.shape[1:])
    reference = reference_outputs(model, x)  # before surgery: the proofs never compare a copy with itself
    student = strip_aux_heads(model)
    checks = [verify_strip(student, model, x, reference)]
    deploy, kind = student, LOGITS_NAME
    alpha = beta = None
    if fold is not None:
        alpha, beta = read_mix(model)
        deploy, kind = fold_dual_head(model, student, fold)
        if fold == "logit":
            checks.append(verify_logit_fold(deploy, model, x, y, min_agreement, max_accuracy_drop, reference))
        else:
            checks.append(verify_fold(deploy, model, x, fold, reference=reference))
    report = SurgeryReport(
        fold=fold, alpha=alpha, beta=beta, output_kind=kind, removed_modules=list_training_only_modules(model),
        params_before=count_params(model), params_after=count_params(deploy),
        macs_before=count_macs(_AllHeads(model).eval(), input_shape), macs_after=count_macs(deploy, input_shape),
        checks=checks)
    return deploy.eval(), report
