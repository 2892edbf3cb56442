"""DHKD's binary-KL losses (Yang et al. 2024, "Dual-Head Knowledge Distillation: Enhancing Logits
Utilization with an Auxiliary Head", arXiv 2411.08937; official code penghui-yang/DHKD, `distiller_zoo/`).

Both losses treat every class logit as an independent binary (sigmoid) prediction, so unlike the
softmax KL they see the logits' absolute level, not only their differences:

- `binary_kl_norm` (the paper's loss, `BinaryKLNorm`): `d = clamp(sigmoid((s - t)/T), eps, 1 - eps)`,
  `L = T^2 * sum_{n,c} [KL(0.5 || d) + KL(0.5 || 1 - d)] / N`. In exact arithmetic this equals
  `(T^2 / N) * sum_{n,c} log cosh((s - t) / (2T))` wherever the clamp is inactive
  (`|s - t| / T < log(1/eps - 1)`, about 18.4 for eps = 1e-8) and is constant beyond.
- `binary_kl` (`BinaryKL`): `p = clamp(sigmoid(s/T))`, `q = clamp(sigmoid(t/T))`,
  `L = T^2 * sum_{n,c} [KL(q || p) + KL(1 - q || 1 - p)] / N`.

Numerics: always float32. The official code forms `log(d)` and `log(1 - d)` from the clamped
sigmoid; in float32 `1 - 1e-8` rounds to 1.0, so the upper clamp does nothing and a logit gap
above ~17 T makes `log(1 - d)` = -inf (an inf loss, NaN gradients); under bf16/fp16 the same happens
for gaps of a few T. Here the logs are taken as clamped log-sigmoids, `log d = clamp(logsigmoid(x),
log eps, log1p(-eps))` and `log(1 - d) = clamp(logsigmoid(-x), ...)`, which is the official
expression in exact arithmetic (same values, same saturation) and finite in float32 for any input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.errors import ConfigError

EPS = 1e-8  # the official clamp
LOSSES = ("binary_kl_norm", "binary_kl")


def _clamped_log_sigmoids(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log clamp(sigmoid(x), eps, 1-eps), log(1 - clamp(sigmoid(x), eps, 1-eps))), both finite.

    `1 - clamp(sigmoid(x), eps, 1-eps) = clamp(sigmoid(-x), eps, 1-eps)`, and log is monotone, so
    each is a clamped log-sigmoid; `log1p(-eps)` keeps the upper bound below 0 in float32.
    """
    lo, hi = math.log(eps), math.log1p(-eps)
    return F.logsigmoid(x).clamp(lo, hi), F.logsigmoid(-x).clamp(lo, hi)


def binary_kl_norm(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                   eps: float = EPS) -> torch.Tensor:
    """DHKD's `BinaryKLNorm`: `T^2 * sum_{n,c} [KL(0.5 || d) + KL(0.5 || 1 - d)] / N`, `d = sigmoid((s - t)/T)`.

    Not shift-invariant: the teacher must give logits (log-probabilities would shift every row).
    The gradient reaches the student only; detach the teacher at the call site as usual.

    Args:
        student_logits: (N, C) logits of the learner (any float dtype; computed in float32).
        teacher_logits: (N, C) teacher logits.
        temperature: T > 0 (official default 2).
    """
    t = float(temperature)
    x = (student_logits.float() - teacher_logits.float()) / t
    log_d, log_1md = _clamped_log_sigmoids(x, eps)
    # KL(0.5 || d) + KL(0.5 || 1-d) per element, as torch's KLDivLoss(log d, 0.5) + KLDivLoss(log(1-d), 0.5)
    half_log_half = 0.5 * math.log(0.5)
    per_elem = (half_log_half - 0.5 * log_d) + (half_log_half - 0.5 * log_1md)
    return (t * t) * per_elem.sum() / student_logits.shape[0]


def binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
              eps: float = EPS) -> torch.Tensor:
    """DHKD's `BinaryKL`: `T^2 * sum_{n,c} [KL(q || p) + KL(1 - q || 1 - p)] / N`, p, q the sigmoids of s/T, t/T.

    Args as `binary_kl_norm`.
    """
    t = float(temperature)
    log_p, log_1mp = _clamped_log_sigmoids(student_logits.float() / t, eps)
    log_q, log_1mq = _clamped_log_sigmoids(teacher_logits.float() / t, eps)
    per_elem = log_q.exp() * (log_q - log_p) + log_1mq.exp() * (log_1mq - log_1mp)
    return (t * t) * per_elem.sum() / student_logits.shape[0]


def dhkd_loss(main_logits: torch.Tensor, aux_logits: torch.Tensor, labels: torch.Tensor,
              teacher_logits: torch.Tensor, *, loss: str = "binary_kl_norm", gamma: float = 1.0, alpha: float = 1.0,
              temperature: float = 2.0, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """The DHKD objective and its terms: `gamma * CE(main, y) + alpha * L_T(aux, teacher)`.

    The main head gets CE only; the auxiliary head gets the binary KD term only (they share the
    backbone, which receives both gradients). Returns {"loss", "ce", "kd"} with the *weighted*
    terms `ce = gamma * CE` and `kd = alpha * L`, the two objectives gradient alignment projects.

    Args:
        main_logits: (N, C) the student's own head. aux_logits: (N, C) the auxiliary head.
        labels: (N,) int64. teacher_logits: (N, C), detached.
        loss: binary_kl_norm (the paper's) | binary_kl.
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown dhkd.loss {loss!r}; choose {' or '.join(LOSSES)}")
    fn = binary_kl_norm if loss == "binary_kl_norm" else binary_kl
    ce = F.cross_entropy(main_logits.float(), labels, label_smoothing=label_smoothing)
    kd = fn(aux_logits, teacher_logits, temperature)
    ce, kd = gamma * ce, alpha * kd
    return {"loss": ce + kd, "ce": ce, "kd": kd}


__all__ = ["EPS", "LOSSES", "binary_kl", "binary_kl_norm", "dhkd_loss"]
