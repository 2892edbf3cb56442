"""Student and teacher zoo (no torchvision/timm). `build_model(name, num_classes, in_channels)`."""

from __future__ import annotations

from functools import partial
from typing import Callable

from edgekd.errors import EdgekdError
from edgekd.models.imagenet import imagenet_resnet
from edgekd.models.mobilenet import mobilenet_v2
from edgekd.models.mobilenet_imagenet import mobilenet_v2_224, mobilenet_v3_small
from edgekd.models.resnet import cifar_resnet
from edgekd.models.student import ModuleStudent, StageInfo, Student
from edgekd.models.tiny import tiny
from edgekd.models.wrn import wide_resnet

ZOO: dict[str, Callable[..., Student]] = {
    "tiny": tiny,
    "resnet8": partial(cifar_resnet, 8),
    "resnet14": partial(cifar_resnet, 14),
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet56": partial(cifar_resnet, 56),
    "resnet8x4": partial(cifar_resnet, 8, widths=(64, 128, 256), stem=32),
    "resnet32x4": partial(cifar_resnet, 32, widths=(64, 128, 256), stem=32),
    "wrn_16_2": partial(wide_resnet, 16, 2),
    "wrn_40_2": partial(wide_resnet, 40, 2),
    "mobilenetv2": mobilenet_v2,
    # ImageNet layout (stride-4 stem), for 160-320 px inputs: edgekd.models.imagenet, mobilenet_imagenet
    "resnet18": partial(imagenet_resnet, 18),
    "resnet34": partial(imagenet_resnet, 34),
    "mobilenetv2_224": mobilenet_v2_224,
    "mobilenetv3_small": mobilenet_v3_small,
}

# The input side each model is built for (README zoo table, `edgekd info --zoo`); 32 when not listed.
NATIVE_SIZE: dict[str, int] = {"resnet18": 224, "resnet34": 224, "mobilenetv2_224": 224, "mobilenetv3_small": 224}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> Student:
    """Build a zoo model by name (`edgekd info --zoo` lists them)."""
    key = name.lower().replace("-", "_")
    if key not in ZOO:
        raise EdgekdError(f"unknown model {name!r}; choose one of {', '.join(ZOO)}")
    return ZOO[key](num_classes=num_classes, in_channels=in_channels)


def native_size(name: str) -> int:
    """The input side a zoo model is designed for: 224 for the ImageNet layout, 32 for the CIFAR zoo."""
    return NATIVE_SIZE.get(name.lower().replace("-", "_"), 32)


__all__ = ["ZOO", "NATIVE_SIZE", "build_model", "native_size", "Student", "StageInfo", "ModuleStudent"]
