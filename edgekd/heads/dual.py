"""DHO's second (KD) head and the inference mix of the two heads.

DHO (Kang et al. 2025, "Simple yet Effective Semi-supervised Knowledge Distillation from
Vision-Language Models via Dual-Head Optimization"): two heads on the same pooled feature; the
CE head is the `Student`'s own `head`, the KD head lives in `TrainingModel.kd_head`. At inference
the heads' *probabilities* are mixed (docs/architecture.md, "Methods"):

    p = a * softmax(z_ce) + (1 - a) * softmax(z_kd / b)

with (a, b) searched on the held-out validation split by `search_mix`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# docs/architecture.md, "Methods": a in 0..1 step 0.05, b in {0.5, 0.75, 1, 1.25, 1.5, 2, 4}
DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
DEFAULT_BETAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


class NormalizedLinearHead(nn.Module):
    """KD head on the L2-normalised pooled feature with a fixed logit scale (DHO paper variant).

    z = scale * normalize(f) @ W^T + bias. Not a plain `nn.Linear` on the pooled feature, so a
    one-GEMM fold of the two heads must apply the normalisation first.
    """

    def __init__(self, feature_dim: int, num_classes: int, logit_scale: float = 16.0):
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes)
        self.logit_scale = float(logit_scale)
        nn.init.normal_(self.linear.weight, 0, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(pooled, dim=1) * self.logit_scale)

    def extra_repr(self) -> str:
        return f"logit_scale={self.logit_scale}"


def build_kd_head(feature_dim: int, num_classes: int, normalized: bool = False,
                  logit_scale: float = 16.0) -> nn.Module:
    """The KD head: a plain `nn.Linear` (foldable with the CE head), or the normalised variant."""
    if normalized:
        return NormalizedLinearHead(feature_dim, num_classes, logit_scale)
    head = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(head.weight, 0, 0.01)  # same init as the Student's own head
    nn.init.zeros_(head.bias)
    return head


def mix_probs(z_ce: torch.Tensor, z_kd: torch.Tensor, alpha: float | torch.Tensor,
              beta: float | torch.Tensor) -> torch.Tensor:
    """p = alpha * softmax(z_ce) + (1 - alpha) * softmax(z_kd / beta), rows sum to 1."""
    return alpha * torch.softmax(z_ce, dim=1) + (1 - alpha) * torch.softmax(z_kd / beta, dim=1)


@dataclass(frozen=True)
class MixSearch:
    """Result of `search_mix`: the chosen pair, its accuracy and NLL, and the full grid."""

    alpha: float
    beta: float
    accuracy: float  # percent, on the data searched
    nll: float
    grid: dict  # (alpha, beta) -> accuracy (percent)


@torch.no_grad()
def search_mix(z_ce: torch.Tensor, z_kd: torch.Tensor, y: torch.Tensor,
               alphas: Sequence[float] = DEFAULT_ALPHAS, betas: Sequence[float] = DEFAULT_BETAS) -> MixSearch:
    """Grid-search (alpha, beta) for the best top-1 of the probability mix on (held-out) data.

    Ties in accuracy are broken by the lower NLL of the mixed probabilities, then by the
    earlier grid entry, so the result is deterministic.

    Args:
        z_ce: (N, C) CE-head logits. z_kd: (N, C) KD-head logits. y: (N,) labels.
    """
    if len(y) == 0:
        raise ValueError("search_mix needs at least one sample")
    z_ce, z_kd, y = z_ce.float().cpu(), z_kd.float().cpu(), y.long().cpu()
    p_ce = torch.softmax(z_ce, dim=1)
    best = None
    grid = {}
    for b in betas:
        p_kd = torch.softmax(z_kd / float(b), dim=1)
        for a in alphas:
            p = float(a) * p_ce + (1.0 - float(a)) * p_kd
            acc = 100.0 * float((p.argmax(1) == y).float().mean())
            nll = float(F.nll_loss(torch.log(p.clamp_min(1e-12)), y))
            grid[(float(a), float(b))] = round(acc, 4)
            key = (acc, -nll)
            if best is None or key > best[0]:
                best = (key, float(a), float(b), acc, nll)
    _, a, b, acc, nll = best
    return MixSearch(alpha=a, beta=b, accuracy=acc, nll=nll, grid=grid)
