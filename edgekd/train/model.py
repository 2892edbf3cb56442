"""`TrainingModel`: the deployable `Student` plus training-only parts, and how each method builds it.

Training-only parts live here and never in the `Student`:
- `aux_heads`: auxiliary classifiers by stage (LSSKD), an `nn.ModuleDict` keyed by stage index;
- `kd_head`: the second (KD) head of DHO on the student's pooled feature (folded into the deployed mix);
- `logit_head`: DHKD's auxiliary head on the pooled feature (`edgekd.heads.logit_head`), dropped at export;
- the teacher is held by the method, frozen, and is never saved with the run.

`build_training_model(cfg, student)` is the one place that decides a method's modules from its
config: training calls it, and `edgekd.train.checkpoint.rebuild_training_model` calls it with
the checkpoint's stored config, so a rebuild needs no method object, data or teacher.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.errors import ConfigError
from edgekd.heads.aux import build_aux_heads
from edgekd.heads.dual import build_kd_head
from edgekd.heads.logit_head import build_logit_head
from edgekd.models import Student

# (a, b) of DHO's inference mix while training (validation before the search picks the pair)
PROVISIONAL_MIX = (0.5, 1.0)


class TrainingModel(nn.Module):
    def __init__(self, student: Student, aux_heads: Optional[nn.ModuleDict] = None,
                 kd_head: Optional[nn.Module] = None, logit_head: Optional[nn.Module] = None):
        super().__init__()
        self.student = student
        self.aux_heads = aux_heads if aux_heads is not None else nn.ModuleDict()
        self.kd_head = kd_head
        self.logit_head = logit_head  # never feeds `forward`: the deployed output is the student's alone
        # DHO inference mix p = a*softmax(z_ce) + (1-a)*softmax(z_kd/b); searched after training
        self.register_buffer("mix_alpha", torch.tensor(1.0))
        self.register_buffer("mix_beta", torch.tensor(1.0))

    @property
    def output_kind(self) -> str:
        """`logits` for a single-head model, `probs` for a dual head (docs/architecture.md, "Surgery math")."""
        return "probs" if self.kd_head is not None else "logits"

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's raw output on upright images: {'main': logits, 'kd': ..., 'aux<i>': ...}."""
        feats, pooled = self.student.forward_features(x)
        out = {"main": self.student.head(pooled)}
        if self.kd_head is not None:
            out["kd"] = self.kd_head(pooled)
        if self.logit_head is not None:
            out["dhkd"] = self.logit_head(pooled)
        for key, head in self.aux_heads.items():
            out[f"aux{key}"] = head(feats[int(key)])
        return out

    def mix(self, z_ce: torch.Tensor, z_kd: torch.Tensor) -> torch.Tensor:
        a, b = self.mix_alpha, self.mix_beta
        return a * torch.softmax(z_ce, dim=1) + (1 - a) * torch.softmax(z_kd / b, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference output: student logits, or mixed probabilities when a KD head exists."""
        if self.kd_head is None:
            return self.student(x)
        _, pooled = self.student.forward_features(x)
        return self.mix(self.student.head(pooled), self.kd_head(pooled))


def use_channels_last(cfg: TrainConfig) -> bool:
    """Whether the model (and so every batch and a checkpoint teacher) is stored channels-last."""
    return cfg.channels_last in ("on", "auto")


def plain_model(cfg: TrainConfig, student: Student) -> TrainingModel:
    """CE, KD and PS-KD: the student alone (KD's teacher belongs to the method, not the model)."""
    return TrainingModel(student)


def lsskd_model(cfg: TrainConfig, student: Student) -> TrainingModel:
    """LSSKD: the student plus one aux classifier per configured stage (`cfg.lsskd`)."""
    return TrainingModel(student, aux_heads=build_aux_heads(student, cfg.lsskd, student.num_classes))


def dho_model(cfg: TrainConfig, student: Student) -> TrainingModel:
    """DHO: the student (its head is the CE head) plus a KD head, optional LSSKD aux classifiers.

    The mix buffers start at the configured override or `PROVISIONAL_MIX`; the search after
    training (or a checkpoint's state) replaces them. `dho.single_head` keeps the student alone.
    """
    d = cfg.dho
    kd_head = None
    if not d.single_head:
        kd_head = build_kd_head(student.feature_dim, student.num_classes, d.normalized_kd_head, d.logit_scale)
    model = TrainingModel(student, kd_head=kd_head)
    if cfg.lsskd.stages:  # LSSKD's auxiliary classifiers train in the same run
        model.aux_heads.update(build_aux_heads(student, cfg.lsskd, student.num_classes))
    if kd_head is not None:
        a, b = PROVISIONAL_MIX
        model.mix_alpha.fill_(d.alpha if d.alpha is not None else a)
        model.mix_beta.fill_(d.beta if d.beta is not None else b)
    return model


def dhkd_model(cfg: TrainConfig, student: Student) -> TrainingModel:
    """DHKD: the student (its head is trained by CE) plus the auxiliary logit head (`cfg.dhkd.head`)."""
    return TrainingModel(student, logit_head=build_logit_head(student.feature_dim, student.num_classes, cfg.dhkd.head))


# method name -> the function that builds its TrainingModel around a student
MODEL_BUILDERS: dict[str, Callable[[TrainConfig, Student], TrainingModel]] = {
    "ce": plain_model,
    "kd": plain_model,
    "pskd": plain_model,
    "lsskd": lsskd_model,
    "dho": dho_model,
    "dhkd": dhkd_model,
}


def build_training_model(cfg: TrainConfig, student: Student) -> TrainingModel:
    """The `TrainingModel` of `cfg.method` around `student` (fresh training-only parts)."""
    builder = MODEL_BUILDERS.get(cfg.method)
    if builder is None:
        raise ConfigError(f"method {cfg.method!r} has no model builder; known: {', '.join(MODEL_BUILDERS)}")
    return builder(cfg, student)
