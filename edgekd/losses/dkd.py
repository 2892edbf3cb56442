"""Decoupled knowledge distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR;
official code megvii-research/mdistiller, `mdistiller/distillers/DKD.py`).

The KD loss splits into a target-class term and a non-target term that get separate weights:

    TCKD = T^2 * mean_n KL([p_t(y), 1 - p_t(y)] || [p_s(y), 1 - p_s(y)])           binary, target vs rest
    NCKD = T^2 * mean_n KL(softmax(t/T) over c != y || softmax(s/T) over c != y)  among the non-targets
    DKD  = warmup(epoch) * (alpha * TCKD + beta * NCKD)

with the official defaults alpha 1, beta 8, T 4, and a linear warm-up of the whole term over the first
20 of 240 epochs (`min(epoch / 20, 1)`, epochs counted from 1). edgekd gives the warm-up as a fraction
of the run (`dkd_warmup_factor`), 20/240 by default, so shorter runs keep the official shape.

Numerics: float32 through log-softmax. The official code takes `log` of the summed probabilities and
masks the target class with `-1000`; here `log(1 - p(y))` is a log-sum-exp over the non-target
log-probabilities and the target class is excluded exactly, which agrees with the official values to
float32 rounding wherever those are finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.losses.kd import standardize_logits

WARMUP_FRACTION = 20 / 240  # the official 20 warm-up epochs of a 240-epoch CIFAR run


def dkd_warmup_factor(epoch: int, epochs: int, warmup: float = WARMUP_FRACTION) -> float:
    """`min((epoch + 1) / (warmup * epochs), 1)` for a 0-based `epoch`; 1 when `warmup` is 0.

    With 240 epochs and the default fraction this is the official `min(epoch / 20, 1)` (1-based epochs).
    """
    span = float(warmup) * max(1, int(epochs))
    return 1.0 if span <= 0 else min((epoch + 1) / span, 1.0)


def _binary_log_probs(log_p: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(N, C) log-probabilities -> (N, 2) log [p(y), 1 - p(y)], stable for p(y) near 1."""
    log_gt = log_p.gather(1, gt[:, None])
    log_rest = torch.logsumexp(log_p.masked_fill(F.one_hot(gt, log_p.shape[1]).bool(), float("-inf")), dim=1,
                               keepdim=True)
    return torch.cat([log_gt, log_rest], dim=1)


def _kl_rows(log_q: torch.Tensor, log_p: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """sum_c q (log q - log p) per row; entries with `keep == False` (log q = log p = -inf) contribute 0.

    The excluded entries are replaced by 0 before any arithmetic, so neither the value nor the
    gradient meets `-inf - -inf`.
    """
    if keep is not None:
        zero = torch.zeros_like(log_q)
        log_q, log_p = torch.where(keep, log_q, zero), torch.where(keep, log_p, zero)
        return torch.where(keep, log_q.exp(), zero).mul(log_q - log_p).sum(dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float = 4.0, standardize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2-scaled and averaged over the batch; needs C >= 2.

    Args:
        student_logits: (N, C) logits of the learner. teacher_logits: (N, C), detached by the caller.
        labels: (N,) int64 target classes.
        standardize: z-score both logits first (logit standardization, `edgekd.losses.kd.standardize_logits`).
    """
    t = float(temperature)
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    s, te = student_logits.float() / t, teacher_logits.float() / t
    n, c = s.shape
    # target vs the rest: binary distributions built from the full softmax
    tckd = _kl_rows(_binary_log_probs(F.log_softmax(te, 1), labels), _binary_log_probs(F.log_softmax(s, 1), labels))
    # among the non-targets: softmax with the target class removed
    other = ~F.one_hot(labels, c).bool()
    log_q = F.log_softmax(te.masked_fill(~other, float("-inf")), dim=1)
    log_p = F.log_softmax(s.masked_fill(~other, float("-inf")), dim=1)
    nckd = _kl_rows(log_q, log_p, other)
    return tckd.sum() * (t * t) / n, nckd.sum() * (t * t) / n


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: float = 1.0,
             standardize: bool = False) -> torch.Tensor:
    """`warmup * (alpha * TCKD + beta * NCKD)`; `warmup` is the factor of `dkd_warmup_factor`."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature, standardize)
    return warmup * (alpha * tckd + beta * nckd)


__all__ = ["WARMUP_FRACTION", "dkd_loss", "dkd_terms", "dkd_warmup_factor"]
