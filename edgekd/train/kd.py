"""KD from a frozen teacher (docs/architecture.md, "Methods"), in two variants (`kd.variant`):

- `hinton` (Hinton, Vinyals and Dean 2015): `kd.ce_weight * CE + kd.kd_weight * T^2 * KL`;
- `dkd` (Zhao et al. 2022, decoupled KD; `edgekd.losses.dkd`): `dkd.ce_weight * CE + warmup * (dkd.alpha * TCKD
  + dkd.beta * NCKD)`, the warm-up a linear ramp over the first `dkd.warmup` of the run.

Either may z-score both logits first (`kd.logit_standardize`, Sun et al. 2024).

The teacher is any kind `edgekd.train.teachers.load_teacher` reads (`--teacher` means the same for
every distilling method): an edgekd checkpoint, TorchScript or ONNX model runs on each augmented
batch the student sees; a logits file gives one fixed row per training image (`Batch.index`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch
from edgekd.errors import ConfigError
from edgekd.losses.dkd import dkd_loss, dkd_warmup_factor
from edgekd.losses.kd import kd_loss
from edgekd.train.method import Log, Method
from edgekd.train.model import TrainingModel, use_channels_last
from edgekd.train.teachers import Teacher, load_teacher, teacher_logits, unnormalize

TEACHER_HELP = ("an edgekd checkpoint, TorchScript, ONNX or .npy/.npz logits file for the same classes, or "
                "zeroshot:ENCODER.onnx,TEXT.npz")


VARIANTS = ("hinton", "dkd")


class KDMethod(Method):
    """KD: Hinton's `ce_weight * CE + kd_weight * T^2 * KL(teacher || student)`, or DKD; the teacher is frozen."""

    name = "kd"

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        if cfg.kd.variant not in VARIANTS:
            raise ConfigError(f"unknown kd.variant {cfg.kd.variant!r}; choose {' or '.join(VARIANTS)}")
        k = cfg.dkd
        if cfg.kd.variant == "dkd" and (k.temperature <= 0 or min(k.ce_weight, k.alpha, k.beta, k.warmup) < 0):
            raise ConfigError("dkd.temperature must be > 0 and dkd.ce_weight, dkd.alpha, dkd.beta, dkd.warmup >= 0")
        if not cfg.teacher:
            raise ConfigError(f"--method kd needs --teacher PATH ({TEACHER_HELP})")
        self.teacher: Teacher = load_teacher(cfg.teacher, data, device, channels_last=use_channels_last(cfg))
        # a logits file: (N_train, C) rows in `data.x_train` order, read by `Batch.index`
        self.table: Optional[torch.Tensor] = None
        if not self.teacher.runnable:
            self.table = teacher_logits(self.teacher, data, "train").to(device)

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        """(B, C) teacher logits for the batch: the teacher on the student's (augmented) images, or its table rows."""
        if self.table is not None:
            return self.table[batch.index.to(self.table.device)].float()
        return self.teacher.run(unnormalize(batch.x, self.data.mean, self.data.std))

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        kd = self.cfg.kd
        logits = model.student(batch.x)
        ce = F.cross_entropy(logits.float(), batch.y, label_smoothing=self.cfg.label_smoothing)
        if kd.variant == "dkd":
            k = self.cfg.dkd
            ramp = dkd_warmup_factor(epoch, self.cfg.epochs, k.warmup)
            soft = dkd_loss(logits, self.teacher_logits(batch), batch.y, alpha=k.alpha, beta=k.beta,
                            temperature=k.temperature, warmup=ramp, standardize=kd.logit_standardize)
            return k.ce_weight * ce + soft, logits
        soft = kd_loss(logits, self.teacher_logits(batch), kd.temperature, standardize=kd.logit_standardize)
        return kd.ce_weight * ce + kd.kd_weight * soft, logits
