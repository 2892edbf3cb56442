"""The deployable `Student`: stem -> stages -> neck -> global pool -> one linear head.

Every backbone exposes its stage outputs (channels, stride) so auxiliary classifiers can be
attached by stage index. `Student.forward` returns a logits tensor and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class StageInfo:
    channels: int
    stride: int  # total downsampling factor of this stage's output w.r.t. the input


class Student(nn.Module):
    """A classifier whose feature extractor is split into named stages.

    Args:
        stem: module applied to the input before the first stage.
        stages: the backbone stages, in order.
        neck: module after the last stage and before pooling (e.g. a final BN-ReLU).
        feature_dim: channels of the pooled feature.
        num_classes: classes of the head.
        stage_info: (channels, stride) of each stage output.
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], neck: nn.Module, feature_dim: int,
                 num_classes: int, stage_info: Sequence[StageInfo]):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.stage_info = tuple(stage_info)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return ([stage outputs], pooled feature (N, feature_dim))."""
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        x = self.neck(x)
        return feats, torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.neck(x)
        return self.head(torch.flatten(self.pool(x), 1))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class ModuleStudent(Student):
    """Wrap a user's `nn.Module` by naming its stage modules and its classifier.

    The wrapped module's own forward is kept for `forward`; stage outputs are captured with
    forward hooks, so any architecture works as long as the named stages run in order and the
    head is an `nn.Linear` applied to a pooled feature.
    """

    def __init__(self, module: nn.Module, stage_names: Sequence[str], head_name: str,
                 input_shape: Sequence[int] = (3, 32, 32)):
        nn.Module.__init__(self)
        self.net = module
        mods = dict(module.named_modules())
        missing = [n for n in list(stage_names) + [head_name] if n not in mods]
        if missing:
            from edgekd.errors import EdgekdError

            raise EdgekdError(f"module has no submodule(s) named {', '.join(missing)}")
        head = mods[head_name]
        if not isinstance(head, nn.Linear):
            from edgekd.errors import EdgekdError

            raise EdgekdError(f"head {head_name!r} must be nn.Linear, got {type(head).__name__}")
        self.stage_names, self.head_name = tuple(stage_names), head_name
        self.feature_dim, self.num_classes = head.in_features, head.out_features
        self._captured: list[torch.Tensor] = []
        self._capturing = False  # only `forward_features` captures: a plain forward or head(pooled) leaves no residue
        # bound methods, not lambdas: `copy.deepcopy` rebinds a bound method to the copy, so a copied
        # student (surgery strips and folds copies) captures into its own list, not the original's
        for n in stage_names:
            mods[n].register_forward_hook(self._keep_output)
        head.register_forward_hook(self._keep_input)
        with torch.no_grad():
            was = module.training
            module.eval()
            feats, _ = self.forward_features(torch.zeros(1, *input_shape))
            module.train(was)
        self.stage_info = tuple(StageInfo(f.shape[1], input_shape[-1] // f.shape[-1]) for f in feats)

    def _keep_output(self, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if self._capturing:
            self._captured.append(output)

    def _keep_input(self, _module: nn.Module, inputs, _output) -> None:
        if self._capturing:
            self._captured.append(inputs[0])

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return dict(self.net.named_modules())[self.head_name]

    def set_head(self, head: nn.Linear) -> None:
        """Replace the named head in the wrapped module (surgery's folds), keeping the pooled-feature capture."""
        parent_name, _, leaf = self.head_name.rpartition(".")
        parent = self.net.get_submodule(parent_name) if parent_name else self.net
        setattr(parent, leaf, head)
        head.register_forward_hook(self._keep_input)
        self.num_classes = head.out_features

    def forward_features(self, x):
        self._captured, self._capturing = [], True
        try:
            self.net(x)
        finally:
            self._capturing = False
        got, self._captured = self._captured, []
        return got[:-1], got[-1]

    def forward(self, x):
        return self.net(x)
