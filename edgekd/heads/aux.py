"""Auxiliary classifiers attached after backbone stages (HSAKD, Yang et al. IJCAI 2021; LSSKD).

Each classifier maps one stage's feature map (N, C_i, H_i, W_i) to logits over 4*C joint labels
(label 4*c + k = class c seen rotated by k*90 degrees). Two branch styles:

- `hsakd`: fresh, re-initialised copies of the stages after stage i plus the neck, global pooling
  and Linear(feature_dim, 4*C). As in HSAKD, each branch has the depth of the rest of the
  backbone, so the cost grows with how shallow the stage is.
- `light`: one conv block (3x3 stride 2, BN, ReLU) to the deepest stage's width, pooling and a
  Linear(width, 4*C); a few percent of the backbone's compute.

Classifiers live in `TrainingModel.aux_heads` keyed by `str(stage index)` and never in the
`Student`; surgery drops them for inference.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from edgekd.config import LSSKDConfig
from edgekd.errors import ConfigError, EdgekdError
from edgekd.models.student import ModuleStudent, Student, conv_bn, init_weights
from edgekd.train.model import TrainingModel

BRANCHES = ("hsakd", "light")
ROTATIONS = 4  # 0/90/180/270 degrees: joint labels have ROTATIONS * num_classes entries


class AuxClassifier(nn.Module):
    """features -> global average pool -> linear over joint (class, rotation) labels."""

    def __init__(self, features: nn.Module, channels: int, num_outputs: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def stage_modules(student: Student) -> list[nn.Module]:
    """The backbone stage modules in order (zoo `Student.stages`, or a `ModuleStudent`'s named stages)."""
    if isinstance(student, ModuleStudent):
        mods = dict(student.net.named_modules())
        return [mods[n] for n in student.stage_names]
    return list(student.stages)


def resolve_aux_stages(student: Student, stages: Sequence[int]) -> tuple[int, ...]:
    """Validate stage indices; `()` means every stage but the last (the only stage for 1-stage nets)."""
    n = len(student.stage_info)
    if not stages:
        return tuple(range(n - 1)) if n > 1 else (0,)
    bad = [s for s in stages if not 0 <= int(s) < n]
    if bad:
        raise ConfigError(f"lsskd.stages {list(stages)} out of range: the model has stages 0..{n - 1}")
    return tuple(sorted({int(s) for s in stages}))


def _fresh_copy(module: nn.Module) -> nn.Module:
    """Deep copy with new weights; hooks are dropped (ModuleStudent's capture hooks must not fire in a branch)."""
    dup = copy.deepcopy(module)
    for m in dup.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    init_weights(dup)
    return dup


@torch.no_grad()
def _output_channels(features: nn.Module, channels: int, spatial: int) -> int:
    """Channels a branch emits, found by a dry run (works for any user-defined stage)."""
    p = next(features.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    was = features.training
    features.eval()  # BN in train mode cannot take a single 1x1 sample
    try:
        out = features(torch.zeros(1, channels, spatial, spatial, device=device))
    finally:
        features.train(was)
    return int(out.shape[1])


def build_aux_head(student: Student, stage: int, num_classes: int, branch: str = "hsakd") -> AuxClassifier:
    """One auxiliary classifier for the output of `stage`, predicting 4*num_classes joint labels."""
    if branch not in BRANCHES:
        raise ConfigError(f"unknown lsskd.branch {branch!r}; choose {' or '.join(BRANCHES)}")
    info = student.stage_info
    channels = info[stage].channels
    # a spatial size that survives the remaining downsampling (padding convs accept any size)
    spatial = 4 * max(1, info[-1].stride // max(1, info[stage].stride))
    if branch == "light":
        width = info[-1].channels
        features: nn.Module = conv_bn(channels, width, 3, 2)
        init_weights(features)
        return AuxClassifier(features, width, ROTATIONS * num_classes)
    rest = [_fresh_copy(m) for m in stage_modules(student)[stage + 1:]]
    neck = student.neck if isinstance(getattr(student, "neck", None), nn.Module) else nn.Identity()
    features = nn.Sequential(*rest, _fresh_copy(neck))
    try:
        out_channels = _output_channels(features, channels, spatial)
    except RuntimeError as exc:
        raise EdgekdError(f"cannot build an hsakd aux classifier after stage {stage}: the copied stages do not "
                          f"chain ({str(exc).splitlines()[0][:100]}); use lsskd.branch=light") from None
    return AuxClassifier(features, out_channels, ROTATIONS * num_classes)


def attach_aux_heads(model: TrainingModel, cfg: LSSKDConfig, num_classes: int) -> TrainingModel:
    """Add one aux classifier per configured stage to `model.aux_heads` (keys `str(stage)`); returns `model`.

    Reusable by any method that wants LSSKD's auxiliary classifiers (e.g. DHO + LSSKD).
    """
    for s in resolve_aux_stages(model.student, cfg.stages):
        model.aux_heads[str(s)] = build_aux_head(model.student, s, num_classes, cfg.branch)
    return model


__all__ = ["AuxClassifier", "BRANCHES", "ROTATIONS", "attach_aux_heads", "build_aux_head",
           "resolve_aux_stages", "stage_modules"]
