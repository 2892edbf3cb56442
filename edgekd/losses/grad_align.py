"""Gradient alignment of a distillation gradient against the task gradient (DHKD's optional optimizer).

DHKD (Yang et al. 2024, arXiv 2411.08937; official code penghui-yang/DHKD `helper/optimizer.py`,
itself after PCGrad, Yu et al. 2020) computes the gradients of the two weighted objectives
separately over all trainable parameters, flattened into one vector each, and projects the KD
gradient off the CE gradient when they conflict:

    g = g_ce + g_kd'        g_kd' = g_kd - (<g_kd, g_ce> / |g_ce|^2) g_ce   if <g_kd, g_ce> < 0, else g_kd

The CE gradient is never changed (its dot product with itself is >= 0). A parameter neither
objective reaches gets a zero gradient, as in the official code (so weight decay and momentum still
apply to it). Under data parallelism both gradients must be averaged across processes *before*
the projection (the projection is not linear): pass `all_reduce`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


def project_conflicting(g_ce: torch.Tensor, g_kd: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(g_ce + g_kd', conflicted) for flat gradient vectors of the same length (see the module docstring)."""
    dot = torch.dot(g_kd, g_ce)
    if dot < 0:  # a zero g_ce gives dot == 0: nothing to project onto
        return g_ce + (g_kd - (dot / g_ce.dot(g_ce)) * g_ce), True
    return g_ce + g_kd, False


def _flat_grads(loss: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads)])


def aligned_backward(ce: torch.Tensor, kd: torch.Tensor, params: Sequence[torch.Tensor],
                     all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict[str, float]:
    """Write the aligned gradient of `ce + kd` into `p.grad` of every parameter in `params`.

    Args:
        ce: the weighted task loss (scalar, e.g. `gamma * CE`). kd: the weighted distillation loss.
        params: the trainable parameters, in the optimizer's order (each gets a `.grad`, zero when unused).
        all_reduce: maps a flat gradient vector to its average over the processes (None in one process).

    Returns:
        {"cos": cosine of the two gradients (after any all-reduce), "conflict": 1.0 if projected else 0.0}
        for logging.
    """
    params = [p for p in params if p.requires_grad]
    g_ce = _flat_grads(ce, params, retain_graph=True)
    g_kd = _flat_grads(kd, params, retain_graph=False)
    if all_reduce is not None:
        g_ce, g_kd = all_reduce(g_ce), all_reduce(g_kd)
    merged, conflict = project_conflicting(g_ce, g_kd)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = merged[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    denom = float(g_ce.norm() * g_kd.norm())
    return {"cos": float(g_ce.dot(g_kd)) / denom if denom > 0 else 0.0, "conflict": float(conflict)}


__all__ = ["aligned_backward", "project_conflicting"]
