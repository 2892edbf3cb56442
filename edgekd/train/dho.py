"""DHO: semi-supervised dual-head distillation from a teacher (DESIGN.md section 3).

The `Student`'s own head is the CE head (labeled images only); `TrainingModel.kd_head` is the KD
head (labeled + unlabeled images, against the teacher). After training, the mix
`p = a*softmax(z_ce) + (1-a)*softmax(z_kd/b)` is searched on the validation split (never test) and
stored in the model's `mix_alpha` / `mix_beta` buffers, so checkpoints carry it.

Options (config section `dho`): labeled subset (`labeled_fraction` / `labeled_per_class`),
`unlabeled_ratio`, loss weights and temperature, `normalized_kd_head` + `logit_scale`,
`online_teacher` (teacher on each augmented batch instead of the cached un-augmented logits),
`alpha` / `beta` overrides, and `single_head` (the single-head KD baseline: CE and KD on one
head). With `kd_weight = 0` no teacher is needed (the CE-only-on-labeled baseline).
With `lsskd.stages` set, LSSKD auxiliary classifiers train in the same run: their terms
(`edgekd.train.selfkd.lsskd_forward`, on the labeled rows) replace the plain CE term.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.data.semisup import SemiSupLoader, select_labeled
from edgekd.errors import CheckpointError, ConfigError
from edgekd.heads.dual import DEFAULT_ALPHAS, DEFAULT_BETAS, search_mix
from edgekd.losses.dho import dho_loss
from edgekd.models import Student
from edgekd.train.model import TrainingModel

PROVISIONAL_MIX = (0.5, 1.0)  # (a, b) used for validation during training, before the search


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` along dim 0; the ranks' row counts may differ (uneven shards)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    rows = max(int(k) for k in counts)
    padded = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(k)] for p, k in zip(parts, counts)])


class DHOMethod:
    """Dual-head optimisation (or its single-head KD / CE-only baselines) on a semi-supervised split."""

    name = "dho"

    def __init__(self, cfg: TrainConfig, data: Optional[ImageData], device: torch.device,
                 log: Optional[Callable[[str], None]] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        d = cfg.dho
        if d.temperature <= 0 or d.ce_weight < 0 or d.kd_weight < 0:
            raise ConfigError("dho.temperature must be > 0 and dho.ce_weight, dho.kd_weight >= 0")
        for key in ("alpha", "beta"):
            v = getattr(d, key)
            if v is not None and not ((0.0 <= v <= 1.0) if key == "alpha" else v > 0):
                raise ConfigError(f"dho.{key} out of range: {v}")
        self.use_aux = bool(cfg.lsskd.stages)
        # DDP must be told when a head gets no gradient: a zero loss weight drops its term entirely
        self.find_unused_parameters = self.use_aux or not (d.ce_weight and d.kd_weight)
        self.teacher = None
        self.table: Optional[torch.Tensor] = None  # (N_train, C) fp16 cached teacher logits
        self.labeled_idx = np.zeros(0, dtype=np.int64)
        self.last_search = None
        if data is None:  # rebuilding from a checkpoint: only build() is needed
            return
        self.labeled_idx = select_labeled(data.y_train, d.labeled_fraction, d.labeled_per_class, cfg.seed)
        if d.kd_weight > 0:
            if not cfg.teacher:
                raise ConfigError("--method dho needs --teacher PATH (checkpoint, TorchScript, ONNX or logits file)")
            from edgekd.teachers import load_teacher

            self.teacher = load_teacher(cfg.teacher, data, device)
            if d.online_teacher and not self.teacher.runnable:
                raise ConfigError(f"dho.online_teacher needs a model teacher; {self.teacher.path.name} is a logits file")

    # ------------------------------------------------------------------ model
    def build(self, student: Student) -> TrainingModel:
        d = self.cfg.dho
        kd_head = None
        if not d.single_head:
            from edgekd.heads.dual import build_kd_head

            kd_head = build_kd_head(student.feature_dim, student.num_classes, d.normalized_kd_head, d.logit_scale)
        model = TrainingModel(student, kd_head=kd_head)
        if self.use_aux:
            from edgekd.heads.aux import attach_aux_heads

            model = attach_aux_heads(model, self.cfg.lsskd, student.num_classes)
        if kd_head is not None:
            a, b = PROVISIONAL_MIX
            model.mix_alpha.fill_(d.alpha if d.alpha is not None else a)
            model.mix_beta.fill_(d.beta if d.beta is not None else b)
        return model

    # ------------------------------------------------------------------ data
    def make_train_loader(self, rank: int, world_size: int, mean, std, device, channels_last: bool) -> SemiSupLoader:
        data, cfg = self.data, self.cfg
        if self.teacher is not None and not cfg.dho.online_teacher:
            self.table = self._cached_table(rank, world_size).to(device)
        if rank == 0 and self.log:
            n = len(data.y_train)
            self.log(f"dho: {len(self.labeled_idx)} labeled / {n - len(self.labeled_idx)} unlabeled training images; "
                     f"teacher {'none' if self.teacher is None else self.teacher.path.name + ' (' + self.teacher.kind + ')'}"
                     f"{', online' if cfg.dho.online_teacher else ', cached'}")
        return SemiSupLoader(data.x_train, data.y_train, self.labeled_idx, cfg.batch_size, mean, std,
                             unlabeled_ratio=cfg.dho.unlabeled_ratio, train=cfg.augment, hflip=data.hflip,
                             seed=cfg.seed, device=device, rank=rank, world_size=world_size, channels_last=channels_last)

    def _cached_table(self, rank: int, world_size: int) -> torch.Tensor:
        """Teacher logits for the train split, (N_train, C) fp16, a full read-only copy per rank.

        Under DDP the first process of each node (LOCAL_RANK 0) runs the teacher and fills the
        on-disk cache while the others wait at a barrier, then read the cached file: the teacher
        runs once per node (once in all with a shared cache directory), never once per process.
        """
        import os

        from edgekd.teachers import teacher_logits

        log = self.log if rank == 0 else None
        if world_size == 1:
            return teacher_logits(self.teacher, self.data, "train", device=self.device, log=log)
        import torch.distributed as dist

        from edgekd.train.distributed import share_from_rank0

        first_on_node = int(os.environ.get("LOCAL_RANK", rank)) == 0
        table = None
        if first_on_node:
            table = teacher_logits(self.teacher, self.data, "train", device=self.device, log=log)
        share_from_rank0(lambda: None)  # a barrier that also stops every rank when rank 0 failed above
        if table is None:
            table = teacher_logits(self.teacher, self.data, "train", device=self.device)
        dist.barrier()
        return table

    # ------------------------------------------------------------------ loss
    def _teacher_batch(self, batch) -> torch.Tensor:
        if self.table is not None:
            return self.table[batch.index.to(self.table.device)].float()
        # online: the teacher sees the same augmented view; undo the student's normalisation
        m = torch.tensor(self.data.mean, device=batch.x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.data.std, device=batch.x.device).view(1, -1, 1, 1)
        return self.teacher.run((batch.x.float() * s + m).contiguous()).float()

    def loss(self, model: TrainingModel, batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.dho
        labeled = getattr(batch, "labeled", None)
        if labeled is None:  # a plain Batch: every row is labeled
            labeled = torch.ones_like(batch.y, dtype=torch.bool)
        t = self._teacher_batch(batch) if d.kd_weight > 0 else None
        _, pooled = model.student.forward_features(batch.x)
        z_ce = model.student.head(pooled)
        z_kd = z_ce if model.kd_head is None else model.kd_head(pooled)
        if not self.use_aux:
            loss, _ = dho_loss(z_ce, z_kd, batch.y, labeled, t, temperature=d.temperature, ce_weight=d.ce_weight,
                               kd_weight=d.kd_weight, label_smoothing=self.cfg.label_smoothing)
            return loss, z_ce
        # LSSKD terms on the labeled rows (rotations need labels), DHO's KD term on every row
        from edgekd.train.selfkd import lsskd_forward

        out = lsskd_forward(model, batch.x[labeled], batch.y[labeled], self.cfg.lsskd,
                            label_smoothing=self.cfg.label_smoothing)
        kd, _ = dho_loss(z_ce, z_kd, batch.y, labeled, t, temperature=d.temperature, ce_weight=0.0,
                         kd_weight=d.kd_weight)
        return d.ce_weight * out.loss + kd, z_ce

    def on_epoch_end(self, model: TrainingModel, epoch: int) -> None:
        pass

    # ------------------------------------------------------------------ after training
    @torch.no_grad()
    def on_train_end(self, model: TrainingModel, val_loader) -> None:
        """Search (a, b) on the validation split and store them in the model (overrides win)."""
        if model.kd_head is None:
            return
        d = self.cfg.dho
        a, b = (float(model.mix_alpha), float(model.mix_beta))
        if val_loader is not None and (d.alpha is None or d.beta is None):
            z_ce, z_kd, y = self._collect(model, val_loader)
            res = search_mix(z_ce, z_kd, y,
                             alphas=[d.alpha] if d.alpha is not None else DEFAULT_ALPHAS,
                             betas=[d.beta] if d.beta is not None else DEFAULT_BETAS)
            a, b = res.alpha, res.beta
            self.last_search = {"alpha": a, "beta": b, "val_acc_mix": round(res.accuracy, 4),
                                "val_nll_mix": round(res.nll, 5), "n": int(len(y))}
            if _dist()[0] == 0 and self.log:
                self.log(f"dho: mix searched on {len(y)} validation images: a={a:g}, b={b:g} "
                         f"(val top-1 {res.accuracy:.2f}%)")
        elif val_loader is None and self.log and _dist()[0] == 0 and (d.alpha is None or d.beta is None):
            self.log(f"dho: no validation split to search the mix on; keeping a={a:g}, b={b:g}")
        model.mix_alpha.fill_(d.alpha if d.alpha is not None else a)
        model.mix_beta.fill_(d.beta if d.beta is not None else b)

    def _collect(self, model: TrainingModel, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        was = model.training
        model.eval()
        zc, zk, ys = [], [], []
        for batch in loader:
            heads = model.heads(batch.x)
            zc.append(heads["main"].float())
            zk.append(heads["kd"].float())
            ys.append(batch.y)
        model.train(was)
        c, dev = model.student.num_classes, next(model.parameters()).device
        z_ce = torch.cat(zc) if zc else torch.zeros(0, c, device=dev)  # an empty shard (tiny val split)
        z_kd = torch.cat(zk) if zk else torch.zeros(0, c, device=dev)
        y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64, device=dev)
        rank, world = _dist()
        if world > 1:  # every rank searches on the whole split so all pick the same (a, b)
            z_ce, z_kd, y = (_all_gather_rows(t) for t in (z_ce, z_kd, y))
        return z_ce, z_kd, y

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"labeled_idx": torch.from_numpy(np.asarray(self.labeled_idx, dtype=np.int64))}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("labeled_idx")
        if saved is not None and self.data is not None and not np.array_equal(saved.numpy(), self.labeled_idx):
            raise CheckpointError("the run's labeled subset differs from the one in its checkpoint "
                                  "(data, seed or --labeled-* options changed)")
