"""Training methods by name (`--method`): a dict literal, and the one function that builds one.

The interface every method follows is `edgekd.train.method.Method`; the modules each method
trains are built by `edgekd.train.model.build_training_model` (shared with checkpoint rebuilds).
"""

from __future__ import annotations

from typing import Optional

import torch

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.errors import ConfigError
from edgekd.train.dhkd import DHKDMethod
from edgekd.train.dho import DHOMethod
from edgekd.train.kd import KDMethod
from edgekd.train.method import CEMethod, Log, Method
from edgekd.train.selfkd import LSSKDMethod, PSKDMethod

METHODS: dict[str, type[Method]] = {
    "ce": CEMethod,
    "kd": KDMethod,
    "pskd": PSKDMethod,
    "lsskd": LSSKDMethod,
    "dho": DHOMethod,
    "dhkd": DHKDMethod,
}


def build_method(cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print) -> Method:
    """The method `cfg.method` for a run on `data` (loads its teacher, allocates its per-sample state)."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[cfg.method](cfg, data, device, log)
