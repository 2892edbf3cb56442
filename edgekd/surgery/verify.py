"""Prove each surgery step on real inputs: the deploy module against the training model.

A failed proof raises `GateError` (exit 3): a deploy module that does not compute what was
trained must never be exported. The reference is the training model's own inference path
(`TrainingModel.heads`: the student's features and main head with every training-only head
attached and run, and `TrainingModel.forward`'s mix), computed by `reference_outputs` *before*
surgery touches anything, so a strip or fold that changed the model in place cannot prove itself
against its own changed copy.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from edgekd.errors import GateError
from edgekd.train.model import TrainingModel

# exact fold: the 2C-row GEMM reorders no sums, but softmax/mix rounding differs by ~1e-7
FOLD_ATOL = 1e-5
FOLD_RTOL = 1e-5


@torch.no_grad()
def _run(module: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    module.eval()
    return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x.new_zeros(0)


@torch.no_grad()
def _heads(model: TrainingModel, x: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    model.eval()
    parts = [model.heads(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def reference_outputs(model: TrainingModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training model's outputs on `x`: every head ('main', 'kd', 'aux<i>', ...) and 'mix' (its forward)."""
    out = _heads(model, x)
    out["mix"] = _run(model, x)
    return out


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> dict:
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    try:
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    except AssertionError as exc:
        first = " ".join(str(exc).split())[:200]
        raise GateError(f"surgery check failed: {name}: deploy output differs from the training model "
                        f"(max |diff| {diff:.3g}, atol {atol}, rtol {rtol}): {first}") from None
    return {"check": name, "n": len(got), "max_abs_diff": diff, "atol": atol, "rtol": rtol,
            "top1_agreement": round(100.0 * float((got.argmax(1) == want.argmax(1)).float().mean()), 4)}


def verify_strip(student: nn.Module, model: TrainingModel, x: torch.Tensor,
                 reference: Optional[dict[str, torch.Tensor]] = None) -> dict:
    """Stripped student vs the training model's main head (`TrainingModel.heads`, training-only heads
    attached): bitwise equal (atol = rtol = 0). `reference`: `reference_outputs` taken before surgery."""
    want = (reference if reference is not None else _heads(model, x))["main"]
    return _assert_close("strip", _run(student, x), want, atol=0.0, rtol=0.0)


def verify_fold(deploy: nn.Module, model: TrainingModel, x: torch.Tensor, mode: str,
                atol: float = FOLD_ATOL, rtol: float = FOLD_RTOL,
                reference: Optional[dict[str, torch.Tensor]] = None) -> dict:
    """Folded module vs what it must equal: exact -> the mix `model(x)`; ce -> the CE head
    (bitwise); kd -> `z_kd / b`. `logit` is an approximation: use `verify_logit_fold`."""
    got = _run(deploy, x)
    heads = reference if reference is not None else reference_outputs(model, x)
    if mode == "exact":
        return _assert_close("fold exact", got, heads["mix"], atol, rtol)
    if mode == "ce":
        return _assert_close("fold ce", got, heads["main"], 0.0, 0.0)
    if mode == "kd":
        return _assert_close("fold kd", got, heads["kd"] / model.mix_beta, atol, rtol)
    raise ValueError(f"verify_fold does not prove mode {mode!r}")


def verify_logit_fold(deploy: nn.Module, model: TrainingModel, x: torch.Tensor, y: Optional[torch.Tensor],
                      min_agreement: float, max_accuracy_drop: float,
                      reference: Optional[dict[str, torch.Tensor]] = None) -> dict:
    """Gate the logit fold: top-1 agreement with the exact mix (percent) must be >= `min_agreement`
    and its top-1 accuracy on labels `y` must not drop more than `max_accuracy_drop` points."""
    got, want = _run(deploy, x), (reference["mix"] if reference is not None else _run(model, x))
    agree = 100.0 * float((got.argmax(1) == want.argmax(1)).float().mean()) if len(x) else 0.0
    out = {"check": "fold logit", "n": len(x), "top1_agreement": round(agree, 4), "min_agreement": min_agreement}
    if y is not None and len(y):
        acc_fold = 100.0 * float((got.argmax(1) == y).float().mean())
        acc_mix = 100.0 * float((want.argmax(1) == y).float().mean())
        out.update(acc_folded=round(acc_fold, 4), acc_exact=round(acc_mix, 4), acc_delta=round(acc_fold - acc_mix, 4),
                   max_accuracy_drop=max_accuracy_drop)
        if acc_mix - acc_fold > max_accuracy_drop:
            raise GateError(f"fold logit refused: top-1 {acc_fold:.2f}% vs {acc_mix:.2f}% for the exact mix on "
                            f"{len(x)} validation images, a drop of {acc_mix - acc_fold:.2f} points > "
                            f"{max_accuracy_drop}; use --fold exact")
    if agree < min_agreement:
        raise GateError(f"fold logit refused: top-1 agreement with the exact mix is {agree:.2f}% on {len(x)} "
                        f"validation images, below --min-agreement {min_agreement}; use --fold exact")
    return out
