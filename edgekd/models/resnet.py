"""CIFAR-style ResNets (He et al. 2016, section 4.2) and the x4-wide variants of CRD (Tian et al. 2020)."""

from __future__ import annotations

from torch import nn

from edgekd.models.student import StageInfo, Student, conv_bn, init_weights


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def make_stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64),
                 stem: int = 16) -> Student:
    """ResNet-`depth` for 32x32 inputs: depth = 6n + 2, three stages of n basic blocks."""
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n + 2")
    n = (depth - 2) // 6
    stages, cin, info, stride = [], stem, [], 1
    for i, w in enumerate(widths):
        s = 1 if i == 0 else 2
        stride *= s
        stages.append(make_stage(cin, w, n, s))
        info.append(StageInfo(w, stride))
        cin = w
    model = Student(conv_bn(in_channels, stem), stages, nn.Identity(), cin, num_classes, info)
    init_weights(model)
    return model
