"""Hinton knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each row: `(z - mean(z)) / (eps + std(z))` over the classes, in float32.

    Logit standardization (Sun et al. 2024, "Logit Standardization in Knowledge Distillation", CVPR;
    official code sunshangquan/logit-standardization-KD): applied to both student and teacher logits
    before dividing by T, so the student matches the teacher's logit *shape*, not its scale. As in
    the official code the std is the unbiased one (C - 1 in the denominator) and eps is added to it.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (eps + z.std(dim=1, keepdim=True))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            standardize: bool = False) -> torch.Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, averaged over the batch (`batchmean`).

    With `standardize`, both logits are z-scored first (`standardize_logits`).

    The T^2 factor keeps gradient magnitudes comparable across temperatures. The teacher is
    not detached here: callers detach it (a frozen teacher, or a deeper head teaching a shallower one).
    Computed in float32 so bf16/fp16 autocast logits do not lose the small probabilities.

    Args:
        student_logits: (N, K) logits of the learner.
        teacher_logits: (N, K) logits of the target distribution.
        temperature: softening temperature T > 0.
    """
    t = float(temperature)
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability target: `mean_i -sum_k target_ik * log_softmax(z_i)_k`."""
    return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


__all__ = ["kd_loss", "soft_cross_entropy", "standardize_logits"]
