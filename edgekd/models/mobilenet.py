"""MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and first downsampling removed."""

from __future__ import annotations

from torch import nn

from edgekd.models.student import StageInfo, Student, conv_bn, init_weights

# (expansion t, channels c, repeats n, stride s); stage boundaries group by output resolution
_SETTINGS = [
    [(1, 16, 1, 1), (6, 24, 2, 1)],
    [(6, 32, 3, 2)],
    [(6, 64, 4, 2), (6, 96, 3, 1)],
    [(6, 160, 3, 2), (6, 320, 1, 1)],
]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1)]
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> Student:
    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    cin = ch(32)
    stem = conv_bn(in_channels, cin, 3, 1)
    stages, info, stride = [], [], 1
    for group in _SETTINGS:
        blocks = []
        for t, c, n, s in group:
            for i in range(n):
                st = s if i == 0 else 1
                stride *= st
                blocks.append(InvertedResidual(cin, ch(c), st, t))
                cin = ch(c)
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(cin, stride))
    last = 1280 if width <= 1.0 else ch(1280)
    neck = conv_bn(cin, last, 1)
    model = Student(stem, stages, neck, last, num_classes, info)
    init_weights(model)
    return model
