"""Wide ResNets (Zagoruyko and Komodakis 2016), pre-activation blocks, CIFAR layout."""

from __future__ import annotations

from torch import nn

from edgekd.models.student import StageInfo, Student, init_weights


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = self.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


def wide_resnet(depth: int, widen: int, num_classes: int = 10, in_channels: int = 3) -> Student:
    """WRN-depth-widen: depth = 6n + 4."""
    if (depth - 4) % 6:
        raise ValueError("WRN depth must be 6n + 4")
    n = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    stages, cin, info, stride = [], 16, [], 1
    for i, w in enumerate(widths):
        s = 1 if i == 0 else 2
        stride *= s
        blocks = [PreActBlock(cin, w, s)] + [PreActBlock(w, w, 1) for _ in range(n - 1)]
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(w, stride))
        cin = w
    neck = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
    model = Student(stem, stages, neck, cin, num_classes, info)
    init_weights(model)
    return model
