"""ImageNet-layout ResNets (He et al. 2016, table 1) for 160-320 px inputs.

Unlike the CIFAR zoo (3x3 stride-1 stem for 32-px images), the stem is a 7x7 stride-2 convolution
and a 3x3 stride-2 max-pool, so the four stages run at strides 4, 8, 16 and 32: at 224 px the
last stage is 7x7. The blocks are the CIFAR zoo's `BasicBlock` (same layout as torchvision's), so
torchvision weights load through `edgekd.models.convert.from_torchvision`.

Module names (what the torchvision mapping targets):
    stem.0 conv1 7x7/2, stem.1 bn1, stem.2 ReLU, stem.3 max-pool 3x3/2
    stages.{i}.{b}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}   (torchvision layer{i+1}.{b}, downsample.{0,1})
    head                                                        (torchvision fc)
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from edgekd.models.resnet import make_stage
from edgekd.models.student import StageInfo, Student, init_weights

# blocks per stage of the basic-block ResNets (table 1 of the paper)
DEPTHS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def imagenet_stem(in_channels: int, width: int = 64) -> nn.Sequential:
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool: (N, C, H, W) -> (N, width, H/4, W/4)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )


def imagenet_resnet(depth: int, num_classes: int = 1000, in_channels: int = 3,
                    widths: Sequence[int] = WIDTHS) -> Student:
    """ResNet-`depth` (18 or 34) in the ImageNet layout: stages at strides 4, 8, 16, 32."""
    if depth not in DEPTHS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(DEPTHS)}")
    stages, info, cin, stride = [], [], widths[0], 4
    for i, (w, n) in enumerate(zip(widths, DEPTHS[depth])):
        s = 1 if i == 0 else 2  # stage 1 follows the max-pool at stride 4 already
        stride *= s
        stages.append(make_stage(cin, w, n, s))
        info.append(StageInfo(w, stride))
        cin = w
    model = Student(imagenet_stem(in_channels, widths[0]), stages, nn.Identity(), cin, num_classes, info)
    init_weights(model)
    return model
