"""Fold DHO's two heads into a deploy module (docs/architecture.md, "Surgery math").

The training model's inference output is `p = a*softmax(z_ce) + (1-a)*softmax(z_kd / b)`
with `z_ce = W_ce f + c_ce`, `z_kd = W_kd f + c_kd` on the pooled feature f (N, d).

- `exact`: one `Linear(d, 2C)` with rows `[W_ce; W_kd / b]` (biases likewise); split, softmax
  each half, mix with a. One GEMM instead of two; emits `probs`.
- `logit`: one `Linear(d, C)`, `W = a*W_ce + (1-a)*W_kd/b`; exact only for a logit-space mix,
  so it is an approximation that the caller must gate (see `verify_logit_fold`). Emits `logits`.
- `ce` / `kd`: keep one head (`kd` keeps `W_kd/b`, so softmax of its output is the a=0 mix).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models import ModuleStudent, Student
from edgekd.names import LOGITS_NAME, PROBS_NAME
from edgekd.train.model import TrainingModel

FOLD_MODES = ("exact", "logit", "ce", "kd")


class DualHeadStudent(nn.Module):
    """A student whose head emits 2C logits `[z_ce; z_kd/b]`, mixed in probability space.

    With `second_head` given (an L2-normalised KD head, which no single GEMM can express), the
    student's head emits z_ce and the KD head runs beside it; the mix is the same.
    """

    def __init__(self, student: Student, alpha: float, num_classes: int,
                 second_head: Optional[nn.Module] = None, beta: float = 1.0):
        super().__init__()
        self.student = student
        self.alpha = float(alpha)  # a Python float: a constant in the exported graph
        self.beta = float(beta)
        self.num_classes = num_classes
        self.second_head = second_head  # not `kd_head`: the graph check forbids that training-only name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.second_head is None:
            z = self.student(x)  # (N, 2C): one GEMM for both heads
            z_ce, z_kd = z[:, : self.num_classes], z[:, self.num_classes:]
        else:
            _, pooled = self.student.forward_features(x)
            z_ce, z_kd = self.student.head(pooled), self.second_head(pooled) / self.beta
        a = self.alpha
        return a * torch.softmax(z_ce, dim=1) + (1.0 - a) * torch.softmax(z_kd, dim=1)


def is_linear_head(kd_head: nn.Module) -> bool:
    """True when the KD head is a plain `nn.Linear` on the pooled feature, the only form a GEMM fold
    may merge. The L2-normalised variant (`NormalizedLinearHead`, or any head flagged `normalized`)
    applies its Linear to `scale * normalize(f)`, not to f, so it is not."""
    return isinstance(kd_head, nn.Linear) and not getattr(kd_head, "normalized", False)


def replace_head(student: Student, head: nn.Linear) -> None:
    """Swap the student's classifier in place (a zoo Student, or the named head of a ModuleStudent)."""
    if isinstance(student, ModuleStudent):
        student.set_head(head)  # re-registers the pooled-feature capture on the new head
    else:
        student.head = head
    student.num_classes = head.out_features


def read_mix(model: TrainingModel) -> tuple[float, float]:
    """(a, b) of the DHO probability mix, from the model's buffers.

    The buffers are float32; '%.7g' gives back the decimal the user or the search chose (0.35, not
    0.3499999940395355), which is what the manifest and the exported constant should say.
    """
    return float("%.7g" % float(model.mix_alpha)), float("%.7g" % float(model.mix_beta))


def fold_dual_head(model: TrainingModel, student: Student, mode: str) -> tuple[nn.Module, str]:
    """Fold `model`'s CE head (the student's) and KD head into one deploy module.

    Args:
        model: the training model holding `kd_head` and the mix buffers.
        student: its stripped student (from `strip_aux_heads`); used as the backbone, not modified.
        mode: exact | logit | ce | kd.

    Returns:
        (deploy module, output kind `probs` or `logits`).
    """
    if mode not in FOLD_MODES:
        raise EdgekdError(f"unknown fold mode {mode!r}; choose one of {', '.join(FOLD_MODES)}")
    if model.kd_head is None:
        raise EdgekdError(f"--fold {mode} needs a dual-head (DHO) checkpoint; this model has one head")
    a, b = read_mix(model)
    if b <= 0:
        raise EdgekdError(f"invalid DHO mix temperature b={b}; it must be > 0")
    deploy = copy.deepcopy(student).eval()
    ce = student.head
    c = ce.out_features
    if not is_linear_head(model.kd_head):
        if mode == "exact":  # still exact, but the KD head runs beside the CE head (two GEMMs)
            second = copy.deepcopy(model.kd_head).eval()
            return DualHeadStudent(deploy, a, c, second_head=second, beta=b).eval(), PROBS_NAME
        if mode == "ce":
            return deploy, LOGITS_NAME
        raise EdgekdError(f"--fold {mode} needs a plain linear KD head; this checkpoint's KD head is "
                          f"{type(model.kd_head).__name__} (L2-normalised feature): use --fold exact or --fold ce")
    kd = model.kd_head
    if kd.in_features != ce.in_features or kd.out_features != c:
        raise EdgekdError(f"KD head shape {tuple(kd.weight.shape)} does not match the CE head "
                          f"{tuple(ce.weight.shape)}")
    with torch.no_grad():
        w_ce, w_kd = ce.weight.detach().clone(), kd.weight.detach() / b
        c_ce = ce.bias.detach().clone() if ce.bias is not None else torch.zeros(c)
        c_kd = (kd.bias.detach() if kd.bias is not None else torch.zeros(c)) / b
        if mode == "ce":
            return deploy, LOGITS_NAME
        if mode == "exact":
            head = nn.Linear(ce.in_features, 2 * c)
            head.weight.copy_(torch.cat([w_ce, w_kd], 0))
            head.bias.copy_(torch.cat([c_ce, c_kd], 0))
            replace_head(deploy, head)
            return DualHeadStudent(deploy, a, c).eval(), PROBS_NAME
        head = nn.Linear(ce.in_features, c)
        if mode == "kd":
            head.weight.copy_(w_kd)
            head.bias.copy_(c_kd)
        else:  # logit
            head.weight.copy_(a * w_ce + (1 - a) * w_kd)
            head.bias.copy_(a * c_ce + (1 - a) * c_kd)
        replace_head(deploy, head)
    return deploy.eval(), LOGITS_NAME
