"""The peer for edgekd's LSSKD step: HSAKD's own ResNet-20 with auxiliary branches (`resnet20_aux`).

Written here from the paper's description (Yang et al. 2021, "Hierarchical Self-supervised
Augmented Knowledge Distillation", IJCAI, section 3 and the CIFAR settings), with torch.nn only so
it shares no code with edgekd:

- backbone: CIFAR ResNet-20 (3x3 stem with 16 channels, three stages of three basic blocks with
  16/32/64 channels, strides 1/2/2, global pooling, linear head);
- one auxiliary branch after *each* of the three stages; a branch is fresh copies of the stages
  that follow it, and the branch after the last stage is one more 64-channel stage at stride 1
  (so branch 2 downsamples once, like stage 3, and branch 3 keeps 8x8), then global pooling and
  a linear layer over 4*C joint (class, rotation) labels;
- the step: the batch is rotated by 0/90/180/270 degrees into 4N rows (row 4i+k = image i at k*90),
  backbone and branches run on all 4N rows with gradients into the backbone (`grad=True`), and
  the loss is CE of the main head on the upright rows plus CE of every branch on the joint labels.

The published code runs in PyTorch's default NCHW memory format; `memory_format` can switch the
peer to channels-last for a like-for-like comparison with edgekd's trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Basic residual block: conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.down is None else self.down(x)
        return F.relu(out)


def layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Block(cin, cout, stride), *[Block(cout, cout, 1) for _ in range(blocks - 1)])


class ResNet20Aux(nn.Module):
    """ResNet-20 plus HSAKD's three auxiliary branches; `forward` returns (main logits, [branch logits])."""

    def __init__(self, num_classes: int = 10, blocks: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList([layer(16, 16, blocks, 1), layer(16, 32, blocks, 2), layer(32, 64, blocks, 2)])
        self.fc = nn.Linear(64, num_classes)
        self.branches = nn.ModuleList([
            nn.Sequential(layer(16, 32, blocks, 2), layer(32, 64, blocks, 2)),
            layer(32, 64, blocks, 2),
            layer(64, 64, blocks, 1),
        ])
        self.branch_fc = nn.ModuleList([nn.Linear(64, 4 * num_classes) for _ in range(3)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        aux = [fc(torch.flatten(F.adaptive_avg_pool2d(branch(f), 1), 1))
               for f, branch, fc in zip(feats, self.branches, self.branch_fc)]
        return logits, aux


def peer_step(model: ResNet20Aux, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One HSAKD self-supervised-augmented training step on a batch (N, 3, H, W); returns the loss."""
    n = x.shape[0]
    xr = torch.stack([torch.rot90(x, k, (2, 3)) for k in range(4)], 1).view(4 * n, *x.shape[1:])
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        xr = xr.contiguous(memory_format=torch.channels_last)
    y_joint = (4 * y[:, None] + torch.arange(4, device=y.device)).view(-1)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        logits, aux = model(xr)
    loss = F.cross_entropy(logits[0::4].float(), y)
    for z in aux:
        loss = loss + F.cross_entropy(z.float(), y_joint)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def build_peer(num_classes: int = 10, channels_last: bool = False, device: str = "cpu"):
    """(model, optimizer) as HSAKD trains its CIFAR students (SGD, momentum 0.9, nesterov, wd 5e-4)."""
    model = ResNet20Aux(num_classes).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, opt
