"""Progressive self-knowledge distillation (Kim et al. 2021, "Self-Knowledge Distillation with
Progressive Refinement of Targets", ICCV).

Target for sample x at epoch t (1-based) of E: `(1 - a_t) * onehot(y) + a_t * p_prev(x)` with
`a_t = a_T * t / E`, where `p_prev` is the model's own prediction for x in the previous epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.losses.kd import soft_cross_entropy


def pskd_alpha(epoch: int, epochs: int, alpha_T: float = 0.8) -> float:
    """`a_t = a_T * (epoch + 1) / E` for a 0-based `epoch` (the official code's schedule: a_T at the last epoch)."""
    return float(alpha_T) * (epoch + 1) / max(1, epochs)


def pskd_targets(labels: torch.Tensor, prev_probs: torch.Tensor, alpha: float,
                 seen: torch.Tensor | None = None) -> torch.Tensor:
    """`(1 - alpha) * onehot + alpha * prev_probs`; rows with `seen == False` keep the plain one-hot.

    Args:
        labels: (N,) int64 class indices.
        prev_probs: (N, C) previous-epoch probabilities (any float dtype).
        alpha: mixing weight a_t in [0, 1].
        seen: optional (N,) bool, False where no previous prediction exists yet.
    """
    onehot = F.one_hot(labels, prev_probs.shape[1]).float()
    target = (1.0 - alpha) * onehot + alpha * prev_probs.float()
    if seen is not None:
        target = torch.where(seen[:, None], target, onehot)
    return target


def pskd_loss(logits: torch.Tensor, labels: torch.Tensor, prev_probs: torch.Tensor, alpha: float,
              seen: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy of `logits` against the PS-KD target."""
    return soft_cross_entropy(logits, pskd_targets(labels, prev_probs, alpha, seen))


__all__ = ["pskd_alpha", "pskd_targets", "pskd_loss"]
