"""Per-head evaluation on a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.train.model import TrainingModel


def class_scores(z: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map a head's output to class scores: joint rotation heads (4*C, label 4*c + k) are summed over k."""
    if z.shape[1] == 4 * num_classes and num_classes > 0:
        return z.view(z.shape[0], num_classes, 4).sum(dim=2)
    return z


def head_names(model: TrainingModel) -> list[str]:
    """Names of the heads `TrainingModel.heads` returns, without running the model."""
    return ["main", *(["kd"] if model.kd_head is not None else []),
            *(["dhkd"] if model.logit_head is not None else []), *(f"aux{k}" for k in model.aux_heads)]


@torch.no_grad()
def evaluate(model: TrainingModel, loader, num_classes: int) -> dict[str, float]:
    """Top-1 of the inference output (`acc`) and of every head (`acc_<head>`), plus NLL `loss`.

    Returns sums and counts so distributed ranks can all-reduce them: keys `n`, `correct`,
    `loss_sum`, `correct_<head>`.
    """
    was = model.training
    model.eval()
    sums: dict[str, float] = {"n": 0.0, "correct": 0.0, "loss_sum": 0.0}
    # every head's key up front: distributed ranks all-reduce the same keys even with an empty shard
    sums.update({f"correct_{name}": 0.0 for name in head_names(model)})
    for batch in loader:
        heads = model.heads(batch.x)
        out = model(batch.x)
        if model.output_kind == "probs":
            loss = F.nll_loss(torch.log(out.clamp_min(1e-12)), batch.y, reduction="sum")
        else:
            loss = F.cross_entropy(out, batch.y, reduction="sum")
        sums["n"] += len(batch.y)
        sums["loss_sum"] += float(loss)
        sums["correct"] += float((out.argmax(1) == batch.y).sum())
        for name, z in heads.items():
            key = f"correct_{name}"
            pred = class_scores(z, num_classes).argmax(1)
            sums[key] = sums.get(key, 0.0) + float((pred == batch.y).sum())
    model.train(was)
    return sums


def summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
    n = max(sums["n"], 1.0)
    out = {f"{prefix}_acc": 100.0 * sums["correct"] / n, f"{prefix}_loss": sums["loss_sum"] / n}
    for k, v in sums.items():
        if k.startswith("correct_"):
            out[f"{prefix}_acc_{k[len('correct_'):]}"] = 100.0 * v / n
    return {k: round(v, 4) for k, v in out.items()}
