"""Training methods. A method turns a batch into a loss; the fit loop owns everything else.

Each method is a class with:
- `build(student, data, cfg) -> TrainingModel` (attach training-only parts),
- `loss(model, batch, epoch) -> (loss, logits)` where `logits` are the main head's on the
  batch's upright images (for running train accuracy),
- optional `on_epoch_end(model, epoch)` and `state_dict()/load_state_dict()` for per-run state
  (e.g. PS-KD's buffer) that must survive a resume.
Methods other than CE live in their own modules and are listed in `METHOD_CLASSES`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch
from edgekd.models import Student
from edgekd.train.model import TrainingModel


class StatelessMethod:
    """The per-epoch and checkpoint hooks of a method that keeps no state between steps."""

    def on_epoch_end(self, model: TrainingModel, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CEMethod(StatelessMethod):
    """Plain cross-entropy on the student's head."""

    name = "ce"

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device

    def build(self, student: Student) -> TrainingModel:
        return TrainingModel(student)

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.student(batch.x)
        return F.cross_entropy(logits, batch.y, label_smoothing=self.cfg.label_smoothing), logits



def method_classes() -> dict:
    """Method name -> class. Each non-CE method lives in its own module, imported when present."""
    import importlib
    import importlib.util

    classes = {"ce": CEMethod}
    for module, names in (("edgekd.train.selfkd", {"kd": "KDMethod", "pskd": "PSKDMethod", "lsskd": "LSSKDMethod"}),
                          ("edgekd.train.dho", {"dho": "DHOMethod"})):
        if importlib.util.find_spec(module) is not None:
            mod = importlib.import_module(module)
            classes.update({k: getattr(mod, v) for k, v in names.items() if hasattr(mod, v)})
    return classes


def build_method(cfg: TrainConfig, data: ImageData, device: torch.device):
    from edgekd.errors import ConfigError

    classes = method_classes()
    if cfg.method not in classes:
        raise ConfigError(f"method {cfg.method!r} is not available in this build of edgekd")
    return classes[cfg.method](cfg, data, device)
