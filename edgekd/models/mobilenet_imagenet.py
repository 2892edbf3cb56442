"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Small (Howard et al. 2019) in the 224-px layout.

Same layers, activations (ReLU6; Hardswish, squeeze-excite with Hardsigmoid) and BatchNorm settings
as the papers' ImageNet models and as torchvision's, with the module nesting kept block for block
(`conv` / `block` Sequentials, `fc1` / `fc2` in squeeze-excite) so torchvision weights load through
`edgekd.models.convert.from_torchvision`. Stages group blocks by output stride (4, 8, 16, 32); the
stride-2 part before them (first conv, and for V2 the t=1 block) is the stem, so a stage-0 auxiliary
classifier does not run at half resolution.

Differences from torchvision, both inference-neutral: no dropout before the classifier, and
MobileNetV3's Linear(576, 1024) + Hardswish after pooling is a 1x1 convolution on the pooled map
inside `neck`, so the `Student` keeps one linear head on a pooled feature (of 1024 channels).
"""

from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

from edgekd.models.student import StageInfo, Student, init_weights

# MobileNetV2: (expansion t, channels c, repeats n, stride s), grouped by output stride; the
# first row (t=1, c=16 at stride 2) sits in the stem.
V2_STEM_BLOCK = (1, 16, 1, 1)
V2_STAGES = [
    [(6, 24, 2, 2)],
    [(6, 32, 3, 2)],
    [(6, 64, 4, 2), (6, 96, 3, 1)],
    [(6, 160, 3, 2), (6, 320, 1, 1)],
]

# MobileNetV3-Small, table 2 of the paper: (kernel, expanded, out, squeeze-excite, hardswish, stride),
# grouped by output stride.
V3_SMALL_STAGES = [
    [(3, 16, 16, True, False, 2)],
    [(3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1)],
    [(5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
     (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1)],
    [(5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)],
]
V3_BN = dict(eps=0.001, momentum=0.01)  # MobileNetV3's BatchNorm settings (torchvision uses the same)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor` without going below 90% of `v` (the papers' rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_norm_act(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                  act: Optional[Type[nn.Module]] = nn.ReLU6, **bn) -> nn.Sequential:
    """Conv (no bias), BatchNorm, optional activation: indices 0, 1, 2 as in torchvision."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, **bn)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidualV2(nn.Module):
    """Expand 1x1 (t > 1), depthwise 3x3, linear project 1x1; residual when shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = [] if expand == 1 else [conv_norm_act(cin, hidden, 1)]
        layers += [conv_norm_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2_224(num_classes: int = 1000, in_channels: int = 3, width: float = 1.0) -> Student:
    """MobileNetV2 for 224-px inputs (stride-2 stem): stages 24@/4, 32@/8, 96@/16, 320@/32 at width 1."""
    cin = make_divisible(32 * width)
    t, c, _, s = V2_STEM_BLOCK
    first = make_divisible(c * width)
    stem = nn.Sequential(conv_norm_act(in_channels, cin, 3, 2), InvertedResidualV2(cin, first, s, t))
    cin = first
    stages, info, stride = [], [], 2
    for group in V2_STAGES:
        blocks = []
        for t, c, n, s in group:
            for i in range(n):
                st = s if i == 0 else 1
                stride *= st
                blocks.append(InvertedResidualV2(cin, make_divisible(c * width), st, t))
                cin = make_divisible(c * width)
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(cin, stride))
    last = make_divisible(1280 * max(1.0, width))
    model = Student(stem, stages, conv_norm_act(cin, last, 1), last, num_classes, info)
    init_weights(model)
    return model


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))), fc1/fc2 1x1 convolutions with bias."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.scale_activation = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


class InvertedResidualV3(nn.Module):
    """Expand 1x1 (when expanded != in), depthwise k x k, optional squeeze-excite, linear project."""

    def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, hardswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=act, **V3_BN))
        layers.append(conv_norm_act(expanded, expanded, k, stride, groups=expanded, act=act, **V3_BN))
        if se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded // 4)))
        layers.append(conv_norm_act(expanded, cout, 1, act=None, **V3_BN))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3) -> Student:
    """MobileNetV3-Small (width 1.0): stages 16@/4, 24@/8, 48@/16, 96@/32; 1024-d pooled feature.

    `neck` = last 1x1 conv (96 -> 576, BN, Hardswish), global pool, 1x1 conv 576 -> 1024 with bias
    and Hardswish (the paper's pre-classifier layer, applied after pooling as in the paper).
    """
    stem = conv_norm_act(in_channels, 16, 3, 2, act=nn.Hardswish, **V3_BN)
    cin, stages, info, stride = 16, [], [], 2
    for group in V3_SMALL_STAGES:
        blocks = []
        for k, exp, out, se, hs, s in group:
            stride *= s
            blocks.append(InvertedResidualV3(cin, k, exp, out, se, hs, s))
            cin = out
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(cin, stride))
    neck = nn.Sequential(
        nn.Conv2d(cin, 6 * cin, 1, bias=False), nn.BatchNorm2d(6 * cin, **V3_BN), nn.Hardswish(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Conv2d(6 * cin, 1024, 1), nn.Hardswish(inplace=True),
    )
    model = Student(stem, stages, neck, 1024, num_classes, info)
    init_weights(model)
    for m in model.modules():  # init_weights leaves conv biases at PyTorch's default; the paper's are zero
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
