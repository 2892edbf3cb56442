"""DHKD's auxiliary logit head (Yang et al. 2024, "Dual-Head Knowledge Distillation", arXiv 2411.08937).

A second classifier on the student's pooled feature (the same feature as the `Student`'s own head),
trained only by the binary KD loss against the teacher while the main head is trained only by CE.
It is a training-only part: it never feeds the main head, so export drops it and the deployed
student is the plain `Student` (the strip proof is bitwise). It lives in its own slot of the
training model, not in DHO's `kd_head`: surgery folds a `kd_head` into a probability mix, which
would be wrong here (DHKD deploys the main head alone).

Two forms, as in the official code (penghui-yang/DHKD, `--linear` / `--nonlinear`):
- `linear`: `Linear(D, C)`;
- `mlp`: `Linear(D, 200) -> Dropout(0.1) -> BatchNorm1d(200) -> ReLU -> Linear(200, C)`.
Both keep PyTorch's default initialisation, as the official models do (their init loop touches
only convolutions and 2-d batch norms).
"""

from __future__ import annotations

from torch import nn

from edgekd.errors import ConfigError

HEAD_KINDS = ("linear", "mlp")
MLP_HIDDEN = 200  # the official hidden width
MLP_DROPOUT = 0.1  # the official dropout


def build_logit_head(feature_dim: int, num_classes: int, kind: str = "linear") -> nn.Module:
    """The DHKD auxiliary head, mapping a pooled feature (N, feature_dim) to logits (N, num_classes).

    The `mlp` form has a BatchNorm1d: in training mode it needs batches of 2 or more rows.
    """
    if kind not in HEAD_KINDS:
        raise ConfigError(f"unknown dhkd.head {kind!r}; choose {' or '.join(HEAD_KINDS)}")
    if kind == "linear":
        return nn.Linear(feature_dim, num_classes)
    return nn.Sequential(
        nn.Linear(feature_dim, MLP_HIDDEN),
        nn.Dropout(p=MLP_DROPOUT),
        nn.BatchNorm1d(MLP_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(MLP_HIDDEN, num_classes),
    )


__all__ = ["HEAD_KINDS", "MLP_DROPOUT", "MLP_HIDDEN", "build_logit_head"]
