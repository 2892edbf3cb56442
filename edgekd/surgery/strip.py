"""Strip the training-only parts (LSSKD's auxiliary classifiers, DHKD's logit head) from a `TrainingModel`.

The auxiliary classifiers read stage features and DHKD's logit head reads the pooled feature, but
neither feeds the student's path, so the stripped student computes exactly the same operations:
its output is bitwise equal. (DHO's `kd_head` is listed too; surgery folds it or drops it.)
"""

from __future__ import annotations

import copy

from torch import nn

from edgekd.models import Student
from edgekd.train.model import TrainingModel

# attribute names of the training-only parts of a TrainingModel (checked again in the ONNX graph)
TRAINING_ONLY_PARTS = ("aux_heads", "kd_head", "logit_head")


def strip_aux_heads(model: TrainingModel) -> Student:
    """Return an eval-mode copy of the deployable student with no training-only parts.

    The training model is left untouched so the copy can be verified against it.
    """
    student = copy.deepcopy(model.student)
    return student.eval()


def list_training_only_modules(model: TrainingModel) -> list[str]:
    """Names of the training-only modules: 'aux_heads.<stage>' for each aux head, 'kd_head', 'logit_head'."""
    names = [f"aux_heads.{k}" for k in model.aux_heads.keys()]
    if model.kd_head is not None:
        names.append("kd_head")
    if model.logit_head is not None:
        names.append("logit_head")
    return names


def training_only_parameters(model: TrainingModel) -> dict[str, nn.Parameter]:
    """Every parameter and buffer of the training-only modules, by qualified name."""
    out = {}
    for part in TRAINING_ONLY_PARTS:
        module = getattr(model, part, None)
        if module is None:
            continue
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            out[f"{part}.{name}"] = t
    return out
