"""KD, PS-KD and LSSKD training methods (the method protocol of `edgekd.train.methods`).

- `KDMethod`: Hinton KD from a frozen edgekd teacher checkpoint (`cfg.teacher`).
- `PSKDMethod`: PS-KD with the previous epoch's predictions in a per-sample fp16 buffer.
- `LSSKDMethod`: auxiliary classifiers on rotation joint labels, layered and ensemble
  self-distillation, optional PS-KD-style progressive targets on the main head.

Reusable pieces for other methods (e.g. DHO + LSSKD): `attach_aux_heads` (edgekd.heads.aux),
`lsskd_forward` (one rotated forward pass + all LSSKD terms), `load_teacher`, `PredictionBuffer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import LSSKDConfig, TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch
from edgekd.errors import ConfigError, EdgekdError
from edgekd.heads.aux import BRANCHES, attach_aux_heads
from edgekd.losses.kd import kd_loss, soft_cross_entropy
from edgekd.losses.lsskd import layer_pairs, lsskd_loss_terms, rotate_batch
from edgekd.losses.pskd import pskd_alpha, pskd_targets
from edgekd.models import Student
from edgekd.train.methods import StatelessMethod
from edgekd.train.model import TrainingModel


# ---------------------------------------------------------------- per-sample prediction buffer

class PredictionBuffer:
    """Each training sample's latest predicted probabilities (fp16), indexed by `Batch.index`.

    Read before write within an epoch, so a read returns the previous epoch's prediction. Under
    torch.distributed every rank sees a different shard each epoch, so `sync()` merges the
    rows updated this epoch across ranks.
    """

    def __init__(self, num_samples: int, num_classes: int, device: torch.device):
        self.pred = torch.zeros(num_samples, num_classes, dtype=torch.float16, device=device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)
        self._updated = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def targets(self, index: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
        """PS-KD targets (N, C) float32; samples without a previous prediction get the one-hot."""
        idx = index.to(self.pred.device)
        return pskd_targets(labels, self.pred[idx], alpha, self.seen[idx])

    @torch.no_grad()
    def update(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        idx = index.to(self.pred.device)
        self.pred[idx] = probs.detach().to(self.pred.dtype)
        self.seen[idx] = True
        self._updated[idx] = True

    @torch.no_grad()
    def sync(self) -> None:
        """Merge this epoch's updates of every rank (a no-op without torch.distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            mask = self._updated.float()
            total = self.pred.float() * mask[:, None]
            dist.all_reduce(total)
            dist.all_reduce(mask)
            got = mask > 0
            self.pred[got] = (total[got] / mask[got, None]).to(self.pred.dtype)
            self.seen |= got
        self._updated.zero_()

    def state_dict(self) -> dict:
        return {"pred": self.pred.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if tuple(state["pred"].shape) != tuple(self.pred.shape):
            raise EdgekdError(f"prediction buffer of shape {tuple(state['pred'].shape)} does not fit "
                              f"{tuple(self.pred.shape)}: the run's training split changed")
        self.pred.copy_(state["pred"].to(self.pred.device, self.pred.dtype))
        self.seen.copy_(state["seen"].to(self.seen.device))


# ---------------------------------------------------------------- KD

def load_teacher(path: Optional[str], data: ImageData, device: torch.device,
                 channels_last: bool = False) -> tuple[nn.Module, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Load a frozen edgekd teacher checkpoint for `data`.

    Returns the teacher's `Student` (eval mode, no gradients) and, when the teacher was trained
    with other normalisation statistics, (scale, shift) of shape (1, C, 1, 1) that map the
    student's normalised input to the teacher's: `x_t = x * scale + shift`.
    Refuses (one-line EdgekdError) a missing path, a foreign file, or a teacher whose class
    count or input shape differs from the data.
    """
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    if not path:
        raise ConfigError("--method kd needs --teacher PATH (an edgekd checkpoint trained on the same classes)")
    ckpt = load_checkpoint(path)
    shape, want = [int(v) for v in ckpt["input_shape"]], list(data.input_shape)
    if shape != want:
        raise EdgekdError(f"teacher {path} takes inputs of shape {shape} but the data has {want}")
    if len(ckpt["class_names"]) != data.num_classes:
        raise EdgekdError(f"teacher {path} has {len(ckpt['class_names'])} classes but the data has {data.num_classes}")
    teacher = rebuild_training_model(ckpt, device).student
    teacher.eval().requires_grad_(False)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    renorm = None
    t_mean, t_std = [float(v) for v in ckpt["mean"]], [float(v) for v in ckpt["std"]]
    if t_mean != list(data.mean) or t_std != list(data.std):
        s_mean, s_std = torch.tensor(data.mean), torch.tensor(data.std)
        tm, ts = torch.tensor(t_mean), torch.tensor(t_std)
        scale = (s_std / ts).view(1, -1, 1, 1).to(device)
        shift = ((s_mean - tm) / ts).view(1, -1, 1, 1).to(device)
        renorm = (scale, shift)
    return teacher, renorm


def _channels_last(cfg: TrainConfig) -> bool:
    return cfg.channels_last in ("on", "auto")  # mirrors the fit loop's choice


class KDMethod(StatelessMethod):
    """Hinton KD: `ce_weight * CE + kd_weight * T^2 * KL(teacher || student)`; the teacher is frozen."""

    name = "kd"

    def __init__(self, cfg: TrainConfig, data: Optional[ImageData], device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.teacher: Optional[nn.Module] = None
        self.renorm = None
        if data is not None:  # data is None when a checkpoint is rebuilt: no teacher needed then
            self.teacher, self.renorm = load_teacher(cfg.teacher, data, device, _channels_last(cfg))

    def build(self, student: Student) -> TrainingModel:
        return TrainingModel(student)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            raise EdgekdError("KD has no teacher loaded (the method was built without data)")
        if self.renorm is not None:
            x = x * self.renorm[0] + self.renorm[1]
        return self.teacher(x)

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        kd = self.cfg.kd
        logits = model.student(batch.x)
        ce = F.cross_entropy(logits.float(), batch.y, label_smoothing=self.cfg.label_smoothing)
        soft = kd_loss(logits, self.teacher_logits(batch.x), kd.temperature)
        return kd.ce_weight * ce + kd.kd_weight * soft, logits


# ---------------------------------------------------------------- PS-KD

class _PredictionBufferState:
    """Per-sample previous-epoch predictions (`self.buffer`, or None) synced and checkpointed."""

    buffer: Optional[PredictionBuffer]

    def on_epoch_end(self, model: TrainingModel, epoch: int) -> None:
        if self.buffer is not None:
            self.buffer.sync()

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()} if self.buffer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.buffer is not None and state.get("buffer"):
            self.buffer.load_state_dict(state["buffer"])


class PSKDMethod(_PredictionBufferState):
    """PS-KD: soft CE against `(1 - a_t) * onehot + a_t * p_prev`, a_t = alpha_T * t / E.

    `p_prev` is the sample's prediction in the previous epoch's training pass (as in the paper's
    code), kept in a `PredictionBuffer` and saved in checkpoints for resume.
    Label smoothing is not applied (the progressive target already softens the labels).
    """

    name = "pskd"

    def __init__(self, cfg: TrainConfig, data: Optional[ImageData], device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.buffer = PredictionBuffer(len(data.y_train), data.num_classes, device) if data is not None else None

    def build(self, student: Student) -> TrainingModel:
        return TrainingModel(student)

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.student(batch.x)
        alpha = pskd_alpha(epoch, self.cfg.epochs, self.cfg.pskd.alpha_T)
        target = self.buffer.targets(batch.index, batch.y, alpha)
        self.buffer.update(batch.index, torch.softmax(logits.detach().float(), dim=1))
        return soft_cross_entropy(logits, target), logits



# ---------------------------------------------------------------- LSSKD

@dataclass
class LSSKDOutput:
    loss: torch.Tensor  # weighted sum of the terms
    terms: dict  # main_ce, aux_ce, layer_kd, ensemble_kd (tensors)
    main_logits: torch.Tensor  # (N, C) main head on the upright images
    pooled: torch.Tensor  # (N, feature_dim) pooled feature of the upright images (for extra heads)


def lsskd_forward(model: TrainingModel, x: torch.Tensor, labels: torch.Tensor, cfg: LSSKDConfig,
                  main_target: Optional[torch.Tensor] = None, label_smoothing: float = 0.0) -> LSSKDOutput:
    """One backbone pass over the 4x rotated batch, every aux head on its stage, all LSSKD terms.

    The main head only sees the upright rows (`[0::4]`); BN statistics see every rotation, as in HSAKD.
    """
    xr = rotate_batch(x)
    feats, pooled = model.student.forward_features(xr)
    pooled_up = pooled[0::4]
    main_logits = model.student.head(pooled_up)
    aux = {int(k): head(feats[int(k)]) for k, head in model.aux_heads.items()}
    terms = lsskd_loss_terms(main_logits, aux, labels, temperature=cfg.temperature,
                             main_ce_weight=cfg.main_ce_weight, aux_ce_weight=cfg.aux_ce_weight,
                             layer_kd_weight=cfg.layer_kd_weight, ensemble_kd_weight=cfg.ensemble_kd_weight,
                             pairing=cfg.pairing, main_target=main_target, label_smoothing=label_smoothing)
    return LSSKDOutput(terms.pop("loss"), terms, main_logits, pooled_up)


class LSSKDMethod(_PredictionBufferState):
    """LSSKD self-distillation (DESIGN.md section 3): aux classifiers on rotation joint labels, no teacher."""

    name = "lsskd"

    def __init__(self, cfg: TrainConfig, data: Optional[ImageData], device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        layer_pairs([], cfg.lsskd.pairing)  # fail on a bad pairing or branch before any training
        if cfg.lsskd.branch not in BRANCHES:
            raise ConfigError(f"unknown lsskd.branch {cfg.lsskd.branch!r}; choose {' or '.join(BRANCHES)}")
        self.buffer = None
        if cfg.lsskd.progressive and data is not None:
            self.buffer = PredictionBuffer(len(data.y_train), data.num_classes, device)

    def build(self, student: Student) -> TrainingModel:
        return attach_aux_heads(TrainingModel(student), self.cfg.lsskd, student.num_classes)

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        target = None
        if self.buffer is not None:
            target = self.buffer.targets(batch.index, batch.y,
                                         pskd_alpha(epoch, self.cfg.epochs, self.cfg.lsskd.alpha_T))
        out = lsskd_forward(model, batch.x, batch.y, self.cfg.lsskd, target, self.cfg.label_smoothing)
        if self.buffer is not None:
            self.buffer.update(batch.index, torch.softmax(out.main_logits.detach().float(), dim=1))
        return out.loss, out.main_logits



__all__ = ["KDMethod", "PSKDMethod", "LSSKDMethod", "PredictionBuffer", "LSSKDOutput", "load_teacher",
           "lsskd_forward", "attach_aux_heads"]
