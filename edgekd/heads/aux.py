"""Auxiliary classifiers attached after backbone stages (HSAKD, Yang et al. IJCAI 2021; LSSKD).

Each classifier maps one stage's feature map (N, C_i, H_i, W_i) to logits over 4*C joint labels
(label 4*c + k = class c seen rotated by k*90 degrees). Two branch styles:

- `hsakd`: fresh, re-initialised copies of the stages after stage i plus the neck, global pooling
  and Linear(feature_dim, 4*C). As in HSAKD, each branch has the depth of the rest of the
  backbone, so the cost grows with how shallow the stage is.
- `light`: one conv block (3x3 stride 2, BN, ReLU) to the deepest stage's width, pooling and a
  Linear(width, 4*C); a few percent of the backbone's compute.

After the last stage the `hsakd` style has no later stages to copy (pooling and the linear alone);
HSAKD itself puts an extra stride-1 stage there, which `lsskd.deepest_branch` adds
(`build_deepest_branch`): with it and the default stages the layout is exactly HSAKD's.

Classifiers live in `TrainingModel.aux_heads` keyed by `str(stage index)` and never in the
`Student`; surgery drops them for inference.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from edgekd.config import LSSKDConfig
from edgekd.errors import ConfigError, EdgekdError, first_line
from edgekd.models.student import ModuleStudent, Student, conv_bn, init_weights

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
                          f"chain ({first_line(exc, 100)}); use lsskd.branch=light") from None
    return AuxClassifier(features, out_channels, ROTATIONS * num_classes)


@torch.no_grad()
def _keeps_shape(block: nn.Module, channels: int, spatial: int) -> bool:
    """Whether `block` maps (1, channels, spatial, spatial) to the same shape (a dry run in eval mode)."""
    was = block.training
    block.eval()
    try:
        out = block(torch.zeros(1, channels, spatial, spatial))
    except RuntimeError:
        return False
    finally:
        block.train(was)
    return tuple(out.shape) == (1, channels, spatial, spatial)


def build_deepest_branch(student: Student, num_classes: int) -> AuxClassifier:
    """HSAKD's deepest branch: the aux classifier after the last stage (HSAKD's `block_extractor3`).

    HSAKD repeats the last stage's block at stride 1 and at the same width (n blocks for a stage of
    n), then pools and classifies over 4*C joint labels. Here: as many fresh copies of the last
    stage's last block as the stage has blocks (that block keeps the feature shape in a CIFAR
    ResNet: stride 1, no projection shortcut), then a fresh copy of the neck. A one-block stage
    (whose block downsamples) gets a new block of the same class at stride 1 instead.
    """
    last = stage_modules(student)[-1]
    blocks = list(last.children()) if isinstance(last, nn.Sequential) and len(last) else [last]
    channels = student.stage_info[-1].channels

    def block() -> nn.Module:
        copied = _fresh_copy(blocks[-1])
        if _keeps_shape(copied, channels, 4):
            return copied
        # a stage of one downsampling block (resnet8): its class at stride 1 and the stage width, as HSAKD
        # builds for its resnet8x4; zoo blocks take (cin, cout, stride)
        try:
            rebuilt = type(blocks[-1])(channels, channels, 1)
        except TypeError:
            rebuilt = None
        if rebuilt is None or not _keeps_shape(rebuilt, channels, 4):
            raise EdgekdError(f"cannot build HSAKD's deepest branch: the last block of the last stage does not keep "
                              f"its {channels}-channel feature shape at stride 1 in this model; "
                              f"set lsskd.deepest_branch=false")
        init_weights(rebuilt)
        return rebuilt

    neck = student.neck if isinstance(getattr(student, "neck", None), nn.Module) else nn.Identity()
    features = nn.Sequential(*[block() for _ in blocks], _fresh_copy(neck))
    return AuxClassifier(features, _output_channels(features, channels, 4), ROTATIONS * num_classes)


def build_aux_heads(student: Student, cfg: LSSKDConfig, num_classes: int) -> nn.ModuleDict:
    """One aux classifier per configured stage, keyed `str(stage)` (what `TrainingModel.aux_heads` holds).

    With `cfg.deepest_branch` the last stage also gets one, HSAKD's (`build_deepest_branch`).
    """
    last = len(student.stage_info) - 1
    stages = resolve_aux_stages(student, cfg.stages)
    heads = {str(s): build_aux_head(student, s, num_classes, cfg.branch)
             for s in stages if not (cfg.deepest_branch and s == last)}
    if cfg.deepest_branch:
        heads[str(last)] = build_deepest_branch(student, num_classes)
    return nn.ModuleDict(heads)


def attach_aux_heads(model: nn.Module, cfg: LSSKDConfig, num_classes: int) -> nn.Module:
    """Add `build_aux_heads(model.student, ...)` to `model.aux_heads`; returns `model`.

    `model` is a `edgekd.train.model.TrainingModel` (any module with `student` and an
    `aux_heads` ModuleDict): this package builds modules and does not import the training code.
    """
    model.aux_heads.update(build_aux_heads(model.student, cfg, num_classes))
    return model


__all__ = ["AuxClassifier", "BRANCHES", "ROTATIONS", "attach_aux_heads", "build_aux_head", "build_aux_heads",
           "build_deepest_branch", "resolve_aux_stages", "stage_modules"]
