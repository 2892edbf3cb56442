"""DHO loss (Kang et al. 2025, dual-head optimization; DESIGN.md section 3).

    loss = ce_weight * CE(z_ce[labeled], y[labeled])
         + kd_weight * T^2 * KL(softmax(t / T) || softmax(z_kd / T))   over labeled + unlabeled

The KD term is Hinton et al. 2015's distillation loss (batchmean, T^2 scaled so its gradient
scale does not depend on T). For single-head KD both terms use the same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (batchmean)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def dho_loss(z_ce: torch.Tensor, z_kd: torch.Tensor, y: torch.Tensor, labeled: torch.Tensor,
             teacher_logits: torch.Tensor, *, temperature: float = 2.0, ce_weight: float = 0.5,
             kd_weight: float = 0.5, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Dual-head loss on a mixed batch.

    Args:
        z_ce: (B, C) CE-head logits. z_kd: (B, C) KD-head logits (pass z_ce for single-head KD).
        y: (B,) labels, any value (e.g. -1) where `labeled` is False.
        labeled: (B,) bool mask of the labeled rows.
        teacher_logits: (B, C) teacher logits for every row (ignored when kd_weight == 0).

    Returns:
        (loss, {"ce": ..., "kd": ...}) with the unweighted terms as floats for logging.
    """
    total = z_ce.new_zeros((), dtype=torch.float32)
    parts = {}
    if ce_weight:
        if bool(labeled.any()):
            ce = F.cross_entropy(z_ce[labeled].float(), y[labeled], label_smoothing=label_smoothing)
        else:  # a batch without labels: keep the graph (DDP) but contribute nothing
            ce = z_ce.float().sum() * 0.0
        total = total + ce_weight * ce
        parts["ce"] = float(ce.detach())
    if kd_weight:
        kd = distill_kl(z_kd, teacher_logits, temperature)
        total = total + kd_weight * kd
        parts["kd"] = float(kd.detach())
    return total, parts
