"""A two-stage CNN for tests and the demo (a few thousand parameters)."""

from __future__ import annotations

from torch import nn

from edgekd.models.student import StageInfo, Student, conv_bn, init_weights


def tiny(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> Student:
    stages = [
        nn.Sequential(conv_bn(width, 2 * width, 3, 2), conv_bn(2 * width, 2 * width)),
        nn.Sequential(conv_bn(2 * width, 4 * width, 3, 2), conv_bn(4 * width, 4 * width)),
    ]
    info = [StageInfo(2 * width, 2), StageInfo(4 * width, 4)]
    model = Student(conv_bn(in_channels, width), stages, nn.Identity(), 4 * width, num_classes, info)
    init_weights(model)
    return model
