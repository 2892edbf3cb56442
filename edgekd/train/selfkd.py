"""Self-distillation methods, no pre-trained teacher (the interface of `edgekd.train.method`).

- `PSKDMethod`: PS-KD with the previous epoch's predictions in a per-sample fp16 buffer.
- `LSSKDMethod`: auxiliary classifiers on rotation joint labels, layered and ensemble
  self-distillation, optional PS-KD-style progressive targets on the main head.

Reusable pieces for other methods (e.g. DHO + LSSKD): `lsskd_forward` (one rotated forward pass
+ all LSSKD terms) and `PredictionBuffer`. Teacher KD is `edgekd.train.kd`; the aux classifiers
are built by `edgekd.train.model.build_training_model` (`edgekd.heads.aux`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from edgekd.config import LSSKDConfig, TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch
from edgekd.errors import ConfigError, EdgekdError
from edgekd.heads.aux import BRANCHES
from edgekd.losses.kd import soft_cross_entropy
from edgekd.losses.lsskd import layer_pairs, lsskd_loss_terms, rotate_batch
from edgekd.losses.pskd import pskd_alpha, pskd_targets
from edgekd.train.collective import all_reduce_, rank_and_world
from edgekd.train.method import Log, Method
from edgekd.train.model import TrainingModel

MAIN_HEADS = ("upright", "hsakd")  # lsskd.main_head: the rows of the rotated batch the main head trains on

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
        if rank_and_world()[1] > 1:
            mask = self._updated.float()
            total = all_reduce_(self.pred.float() * mask[:, None])  # (N, C) sum of the ranks' fresh rows
            all_reduce_(mask)  # (N,) how many ranks updated each row (padded shards repeat a few)
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


# ---------------------------------------------------------------- PS-KD

class _PredictionBufferState(Method):
    """Per-sample previous-epoch predictions (`self.buffer`, or None) synced and checkpointed."""

    buffer: Optional[PredictionBuffer] = None

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

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        self.buffer = PredictionBuffer(len(data.y_train), data.num_classes, device)

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

    BN statistics see every rotation, as in HSAKD. With `lsskd.main_head=upright` the main head only
    sees the upright rows (`[0::4]`); with `hsakd` it runs on all 4N rows, CE on the upright ones and
    the ensemble KD on every row (HSAKD's form). `main_logits` in the output are the upright rows'.
    """
    if cfg.main_head not in MAIN_HEADS:
        raise ConfigError(f"unknown lsskd.main_head {cfg.main_head!r}; choose {' or '.join(MAIN_HEADS)}")
    xr = rotate_batch(x)
    feats, pooled = model.student.forward_features(xr)
    pooled_up = pooled[0::4]
    all_rows = cfg.main_head == "hsakd"
    main_logits = model.student.head(pooled if all_rows else pooled_up)
    aux = {int(k): head(feats[int(k)]) for k, head in model.aux_heads.items()}
    terms = lsskd_loss_terms(main_logits, aux, labels, temperature=cfg.temperature,
                             main_ce_weight=cfg.main_ce_weight, aux_ce_weight=cfg.aux_ce_weight,
                             layer_kd_weight=cfg.layer_kd_weight, ensemble_kd_weight=cfg.ensemble_kd_weight,
                             pairing=cfg.pairing, main_target=main_target, label_smoothing=label_smoothing,
                             main_rows="all" if all_rows else "upright")
    return LSSKDOutput(terms.pop("loss"), terms, main_logits[0::4] if all_rows else main_logits, pooled_up)


class LSSKDMethod(_PredictionBufferState):
    """LSSKD self-distillation (docs/architecture.md, "Methods"): aux classifiers on rotation joint labels.

    No teacher. The aux classifiers are in the `TrainingModel` (`edgekd.train.model.lsskd_model`).
    """

    name = "lsskd"

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        layer_pairs([], cfg.lsskd.pairing)  # fail on a bad pairing or branch before any training
        if cfg.lsskd.branch not in BRANCHES:
            raise ConfigError(f"unknown lsskd.branch {cfg.lsskd.branch!r}; choose {' or '.join(BRANCHES)}")
        if cfg.lsskd.main_head not in MAIN_HEADS:
            raise ConfigError(f"unknown lsskd.main_head {cfg.lsskd.main_head!r}; choose {' or '.join(MAIN_HEADS)}")
        self.buffer = None
        if cfg.lsskd.progressive:
            self.buffer = PredictionBuffer(len(data.y_train), data.num_classes, device)

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        target = None
        if self.buffer is not None:
            target = self.buffer.targets(batch.index, batch.y,
                                         pskd_alpha(epoch, self.cfg.epochs, self.cfg.lsskd.alpha_T))
        out = lsskd_forward(model, batch.x, batch.y, self.cfg.lsskd, target, self.cfg.label_smoothing)
        if self.buffer is not None:
            self.buffer.update(batch.index, torch.softmax(out.main_logits.detach().float(), dim=1))
        return out.loss, out.main_logits


__all__ = ["PSKDMethod", "LSSKDMethod", "PredictionBuffer", "LSSKDOutput", "lsskd_forward"]
