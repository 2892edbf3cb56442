"""DHO loss (Kang et al. 2025, dual-head optimization; docs/architecture.md, "Methods").

    loss = ce_weight * CE(z_ce[labeled], y[labeled]) + kd_weight * KD

The KD term is Hinton et al. 2015's distillation loss `T^2 * KL(softmax(t/T) || softmax(z_kd/T))`
(batchmean, T^2 scaled so its gradient scale does not depend on T), reduced in one of two ways:

- `split` (the official code, erjui/DHO `train_others.py`: `0.5*CE + 0.5*(KL_labeled + KL_unlabeled)`):
  one batch mean over the labeled rows plus one over the unlabeled rows, summed. With as many
  unlabeled as labeled rows this is twice the `rows` value.
- `rows`: one batch mean over every row (edgekd's earlier form).

For single-head KD both terms use the same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.errors import ConfigError


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (batchmean)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


KD_REDUCTIONS = ("split", "rows")


def split_distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labeled: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """The official DHO KD term: `distill_kl` over the labeled rows + `distill_kl` over the unlabeled rows.

    An empty part contributes 0 (a batch of labeled rows only gives the plain `distill_kl`).
    """
    total = student_logits.float().sum() * 0.0  # keeps the graph (DDP) when both parts are empty
    for part in (labeled, ~labeled):
        if bool(part.any()):
            total = total + distill_kl(student_logits[part], teacher_logits[part], temperature)
    return total


def dho_loss(z_ce: torch.Tensor, z_kd: torch.Tensor, y: torch.Tensor, labeled: torch.Tensor,
             teacher_logits: torch.Tensor, *, temperature: float = 2.0, ce_weight: float = 0.5,
             kd_weight: float = 0.5, label_smoothing: float = 0.0,
             kd_reduction: str = "rows") -> tuple[torch.Tensor, dict[str, float]]:
    """Dual-head loss on a mixed batch.

    Args:
        z_ce: (B, C) CE-head logits. z_kd: (B, C) KD-head logits (pass z_ce for single-head KD).
        y: (B,) labels, any value (e.g. -1) where `labeled` is False.
        labeled: (B,) bool mask of the labeled rows.
        teacher_logits: (B, C) teacher logits for every row (ignored when kd_weight == 0).
        kd_reduction: `split` (official: labeled mean + unlabeled mean) or `rows` (one mean over all
            rows). The `dho` method passes its config's choice, `split` by default.

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
        if kd_reduction not in KD_REDUCTIONS:
            raise ConfigError(f"unknown dho.kd_reduction {kd_reduction!r}; choose {' or '.join(KD_REDUCTIONS)}")
        if kd_reduction == "split":
            kd = split_distill_kl(z_kd, teacher_logits, labeled, temperature)
        else:
            kd = distill_kl(z_kd, teacher_logits, temperature)
        total = total + kd_weight * kd
        parts["kd"] = float(kd.detach())
    return total, parts
