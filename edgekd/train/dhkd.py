"""DHKD: dual-head knowledge distillation from a frozen teacher (Yang et al. 2024, arXiv 2411.08937;
official code penghui-yang/DHKD; docs/architecture.md, "Methods").

The student's own head is trained by CE alone; an auxiliary head on the same pooled feature
(`TrainingModel.logit_head`, `edgekd.heads.logit_head`, built by `edgekd.train.model.dhkd_model`)
is trained by the binary KL loss against the teacher alone (`edgekd.losses.dhkd`); the backbone gets
both gradients:

    loss = dhkd.gamma * CE(main, y) + dhkd.alpha * BinaryKLNorm_T(aux, teacher logits)

The teacher runs on the student's augmented view of every batch, as in the official loop. It must
output logits: BinaryKLNorm is not shift-invariant, so the log-probabilities a probability-output
teacher gives would be a different target. A teacher known to output probabilities (an edgekd DHO
export), or a TorchScript teacher whose outputs on a probe batch are rows of probabilities, is
refused; so is a logits file (one fixed view per image, and nothing says it holds logits).
With `dhkd.grad_align` the KD gradient is projected off the CE gradient when they conflict
(`edgekd.losses.grad_align`, the official `--ga`); the projection needs the two gradients averaged
over all processes, which DDP's fused all-reduce does not give, so the option is refused with more
than one process. Export drops the auxiliary head: the deployed model is the plain student.
"""

from __future__ import annotations

from typing import Optional

import torch

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch, nhwc_to_tensor
from edgekd.errors import ConfigError
from edgekd.heads.logit_head import HEAD_KINDS
from edgekd.losses.dhkd import LOSSES, dhkd_loss
from edgekd.losses.grad_align import aligned_backward
from edgekd.train.collective import rank_and_world
from edgekd.train.method import Log, Method
from edgekd.train.model import TrainingModel, use_channels_last
from edgekd.train.teachers import Teacher, load_teacher, unnormalize

PROBE_IMAGES = 16  # training images a teacher of unknown output kind is probed on


def check_dhkd_config(cfg: TrainConfig, world_size: int) -> None:
    """One-line ConfigErrors for bad `dhkd.*` values, before any teacher is loaded."""
    d = cfg.dhkd
    if d.head not in HEAD_KINDS:
        raise ConfigError(f"unknown dhkd.head {d.head!r}; choose {' or '.join(HEAD_KINDS)}")
    if d.loss not in LOSSES:
        raise ConfigError(f"unknown dhkd.loss {d.loss!r}; choose {' or '.join(LOSSES)}")
    if d.temperature <= 0 or d.gamma < 0 or d.alpha < 0:
        raise ConfigError("dhkd.temperature must be > 0 and dhkd.gamma, dhkd.alpha >= 0")
    if d.grad_align and world_size > 1:
        raise ConfigError(f"dhkd.grad_align projects whole-model gradients and is not supported with {world_size} "
                          f"processes; train on one process or set dhkd.grad_align=false")
    if not cfg.teacher:
        raise ConfigError("--method dhkd needs --teacher PATH (an edgekd checkpoint, TorchScript or ONNX model that "
                          "outputs logits, for the same classes, or zeroshot:ENCODER.onnx,TEXT.npz)")


def looks_like_probabilities(out: torch.Tensor, atol: float = 1e-3) -> bool:
    """True when every row of (N, C) `out` is non-negative and sums to 1 (within `atol`)."""
    out = out.float()
    return bool((out >= 0).all()) and bool(((out.sum(dim=1) - 1).abs() <= atol).all())


def check_logit_teacher(teacher: Teacher, data: ImageData) -> None:
    """Refuse a teacher that cannot give logits of the student's augmented view (see the module docstring)."""
    if not teacher.runnable:
        raise ConfigError(f"--method dhkd runs the teacher on each augmented batch; {teacher.describe()} is a logits "
                          f"file (one fixed view per image): give the teacher model")
    kind = teacher.output_kind
    if kind == "unknown":  # TorchScript: look at what it returns
        # split(): model-sized evaluation crops (x_train rows are the larger stored squares with --image-size)
        x01 = nhwc_to_tensor(data.split("train")[0][:PROBE_IMAGES]).float().div_(255.0)
        kind = "probs" if looks_like_probabilities(teacher.run(x01)) else "logits"
    if kind == "probs":
        raise ConfigError(f"--method dhkd needs a teacher that outputs logits; {teacher.describe()} outputs "
                          f"probabilities (BinaryKLNorm is not shift-invariant: log-probabilities are not logits)")


class DHKDMethod(Method):
    """DHKD: CE on the main head, binary KL from the teacher on the auxiliary head."""

    name = "dhkd"

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        check_dhkd_config(cfg, rank_and_world()[1])
        d = cfg.dhkd
        # a zero weight drops a head's only loss term: DDP must be told that head gets no gradient
        self.find_unused_parameters = not (d.gamma and d.alpha)
        self.teacher: Teacher = load_teacher(cfg.teacher, data, device, channels_last=use_channels_last(cfg))
        check_logit_teacher(self.teacher, data)
        # grad_align: the step's weighted terms and the parameters they reach, kept by `loss` for `backward`
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor, list[torch.nn.Parameter]]] = None

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        """(B, C) float32 teacher logits on the student's (augmented) images."""
        return self.teacher.run(unnormalize(batch.x, self.data.mean, self.data.std)).float()

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.dhkd
        t = self.teacher_logits(batch)
        _, pooled = model.student.forward_features(batch.x)
        main = model.student.head(pooled)
        terms = dhkd_loss(main, model.logit_head(pooled), batch.y, t, loss=d.loss, gamma=d.gamma, alpha=d.alpha,
                          temperature=d.temperature, label_smoothing=self.cfg.label_smoothing)
        if d.grad_align:  # the official optimizer aligns over every trainable parameter, in their order
            self._pending = (terms["ce"], terms["kd"], [p for p in model.parameters() if p.requires_grad])
        return terms["loss"], main

    def backward(self, loss: torch.Tensor, scale: float = 1.0) -> None:
        """The gradient of `loss`, or with `dhkd.grad_align` the aligned sum of its two terms' gradients.

        A loss scale multiplies both terms: the projection is linear in a common factor, so the
        aligned gradient comes out scaled exactly as `loss.backward()`'s would."""
        if self._pending is None:
            loss.backward()
            return
        ce, kd, params = self._pending
        self._pending = None
        aligned_backward(ce * scale, kd * scale, params)


__all__ = ["DHKDMethod", "check_dhkd_config", "check_logit_teacher", "looks_like_probabilities"]
