"""DHO: semi-supervised dual-head distillation from a teacher (docs/architecture.md, "Methods").

The `Student`'s own head is the CE head (labeled images only); `TrainingModel.kd_head` is the KD
head (labeled + unlabeled images, against the teacher). After training, the mix
`p = a*softmax(z_ce) + (1-a)*softmax(z_kd/b)` is searched on the validation split (never test) and
stored in the model's `mix_alpha` / `mix_beta` buffers, so checkpoints carry it; the search's
evidence (the grid, the chosen pair's validation top-1) is the record `on_train_end` returns, which
the fit loop keeps in `summary.json` and `best.pt`.

Options (config section `dho`): labeled subset (`labeled_fraction` / `labeled_per_class`),
`unlabeled_ratio`, loss weights and temperature, `normalized_kd_head` + `logit_scale`,
`teacher_cache` (where the teacher's targets come from):
- `none` (default): the teacher runs on each augmented batch the student sees, as in the official
  code (a logits-file teacher gives its rows: it has nothing else);
- `clean`: its logits on the un-augmented images, computed once and cached: fast, but a different
  target (the teacher never sees the student's view);
- `views`: its logits on `view_rounds` fixed augmented views per image (`edgekd.data.views`, seed
  `view_seed`, default the run's), computed once per round and cached: the loader then draws each
  image's augmentation from those views (pass k over a pool uses round k mod R), so every target is
  the online teacher's on the very view the student sees; the cost is R teacher passes over the
  training split, once for every run with the same views (a sweep over students or seeds with a
  fixed `view_seed`), and views repeat after R passes over a pool;
`kd_reduction` (`split`, the official `KL(labeled) + KL(unlabeled)`, or
`rows`, one mean over all rows; see `edgekd.losses.dho`),
`alpha` / `beta` overrides, and `single_head` (the single-head KD baseline: CE and KD on one
head). With `kd_weight = 0` no teacher is needed (the CE-only-on-labeled baseline).
With `lsskd.stages` set, LSSKD auxiliary classifiers train in the same run: their terms
(`edgekd.train.selfkd.lsskd_forward`, on the labeled rows) replace the plain CE term.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch, BatchLoader
from edgekd.data.semisup import SemiSupLoader, select_labeled
from edgekd.data.views import ViewPlan
from edgekd.errors import CheckpointError, ConfigError
from edgekd.heads.dual import DEFAULT_ALPHAS, DEFAULT_BETAS, search_mix
from edgekd.losses.dho import KD_REDUCTIONS, dho_loss
from edgekd.train.collective import all_gather_rows, barrier, local_rank, rank_and_world, share_from_rank0
from edgekd.train.method import Log, Method
from edgekd.train.model import TrainingModel
from edgekd.train.selfkd import lsskd_forward
from edgekd.train.teachers import load_teacher, teacher_logits, unnormalize, view_logits

TEACHER_CACHES = ("none", "clean", "views")


def teacher_cache_mode(cfg: TrainConfig) -> str:
    """`dho.teacher_cache`, with the legacy `dho.online_teacher` (false = clean) folded in; ConfigError if bad."""
    d = cfg.dho
    if d.teacher_cache not in TEACHER_CACHES:
        raise ConfigError(f"unknown dho.teacher_cache {d.teacher_cache!r}; choose {', '.join(TEACHER_CACHES)}")
    if d.online_teacher is not None and d.teacher_cache != "none":
        raise ConfigError("give dho.teacher_cache or the legacy dho.online_teacher, not both")
    if d.online_teacher is False:
        return "clean"
    if d.teacher_cache == "views" and not cfg.augment:
        raise ConfigError("dho.teacher_cache=views caches augmented views; without augment, use teacher_cache=clean")
    if d.view_rounds < 1:
        raise ConfigError(f"dho.view_rounds must be >= 1, got {d.view_rounds}")
    return d.teacher_cache


def view_rows(tables: list, index: torch.Tensor, rounds: torch.Tensor) -> torch.Tensor:
    """(B, C) float32 rows `index` of the per-round tables (numpy, maybe memory-mapped), each row in its round."""
    idx, rnd = index.cpu().numpy(), rounds.cpu().numpy()
    out = np.empty((len(idx), tables[0].shape[1]), dtype=np.float32)
    for r in np.unique(rnd):
        rows = rnd == r
        out[rows] = tables[int(r)][idx[rows]]
    return torch.from_numpy(out)


class DHOMethod(Method):
    """Dual-head optimisation (or its single-head KD / CE-only baselines) on a semi-supervised split.

    The modules (KD head, optional aux classifiers, the provisional mix) are built by
    `edgekd.train.model.dho_model`; this class holds the teacher, the labeled subset and the loss.
    """

    name = "dho"

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        d = cfg.dho
        if d.temperature <= 0 or d.ce_weight < 0 or d.kd_weight < 0:
            raise ConfigError("dho.temperature must be > 0 and dho.ce_weight, dho.kd_weight >= 0")
        if d.kd_reduction not in KD_REDUCTIONS:
            raise ConfigError(f"unknown dho.kd_reduction {d.kd_reduction!r}; choose {' or '.join(KD_REDUCTIONS)}")
        for key in ("alpha", "beta"):
            v = getattr(d, key)
            if v is not None and not ((0.0 <= v <= 1.0) if key == "alpha" else v > 0):
                raise ConfigError(f"dho.{key} out of range: {v}")
        self.use_aux = bool(cfg.lsskd.stages)
        # DDP must be told when a head gets no gradient: a zero loss weight drops its term entirely
        self.find_unused_parameters = self.use_aux or not (d.ce_weight and d.kd_weight)
        self.cache = teacher_cache_mode(cfg)
        self.teacher = None
        self.online = False  # the teacher runs on each augmented batch (else cached rows by Batch.index)
        self.table: Optional[torch.Tensor] = None  # (N_train, C) fp16 cached teacher logits (clean images)
        self.views: Optional[ViewPlan] = None  # teacher_cache=views: the fixed views ...
        self.view_tables: list = []  # ... and per round the (N_train, C) fp16 teacher logits on them
        self.labeled_idx = select_labeled(data.y_train, d.labeled_fraction, d.labeled_per_class, cfg.seed)
        if d.kd_weight > 0:
            if not cfg.teacher:
                raise ConfigError("--method dho needs --teacher PATH (checkpoint, TorchScript, ONNX, zeroshot: or "
                                  "logits file)")
            self.teacher = load_teacher(cfg.teacher, data, device)
            if not self.teacher.runnable and (d.online_teacher or self.cache == "views"):
                what = "dho.online_teacher" if d.online_teacher else "dho.teacher_cache=views"
                raise ConfigError(f"{what} needs a model teacher; {self.teacher.label} is a logits file")
            self.online = self.teacher.runnable and self.cache == "none"
            if self.cache == "views":
                seed = cfg.seed if d.view_seed is None else d.view_seed
                self.views = ViewPlan.for_data(data, d.view_rounds, seed)

    # ------------------------------------------------------------------ data
    def make_train_loader(self, *, rank: int, world_size: int, channels_last: bool) -> SemiSupLoader:
        data, cfg = self.data, self.cfg
        if self.views is not None:
            rounds = range(self.cfg.dho.view_rounds)
            self.view_tables = self._node_cached(rank, world_size, lambda log: view_logits(
                self.teacher, data, self.views, rounds, device=self.device, log=log))
        elif self.teacher is not None and not self.online:
            self.table = self._node_cached(rank, world_size, lambda log: teacher_logits(
                self.teacher, data, "train", device=self.device, log=log)).to(self.device)
        if rank == 0 and self.log:
            n = len(data.y_train)
            how = {"none": "online (augmented views)", "clean": "cached (un-augmented images)",
                   "views": f"cached on {cfg.dho.view_rounds} fixed augmented views per image"}
            self.log(f"dho: {len(self.labeled_idx)} labeled / {n - len(self.labeled_idx)} unlabeled training images; "
                     f"teacher {'none' if self.teacher is None else self.teacher.describe()}"
                     f"{'' if self.teacher is None else ', ' + how[self.cache if self.teacher.runnable else 'clean']}")
        return SemiSupLoader(data.x_train, data.y_train, self.labeled_idx, cfg.batch_size, data.mean, data.std,
                             unlabeled_ratio=cfg.dho.unlabeled_ratio, train=cfg.augment, hflip=data.hflip,
                             seed=cfg.seed, device=self.device, rank=rank, world_size=world_size,
                             channels_last=channels_last, views=self.views)

    def _node_cached(self, rank: int, world_size: int, compute):
        """`compute(log)`: a cached teacher output (clean logits or view rounds), a full read-only copy per rank.

        Under DDP the first process of each node (LOCAL_RANK 0) runs the teacher and fills the
        on-disk cache while the others wait at a barrier, then read the cached files: the teacher
        runs once per node (once in all with a shared cache directory), never once per process.
        """
        log = self.log if rank == 0 else None
        if world_size == 1:
            return compute(log)
        out = None
        if local_rank(default=rank) == 0:  # the first process of its node
            out = compute(log)
        share_from_rank0(lambda: None)  # a barrier that also stops every rank when rank 0 failed above
        if out is None:
            out = compute(None)
        barrier()
        return out

    # ------------------------------------------------------------------ loss
    def _teacher_batch(self, batch: Batch) -> torch.Tensor:
        if self.table is not None:
            return self.table[batch.index.to(self.table.device)].float()
        if self.view_tables:  # each row's round of the fixed views (SemiSupBatch.rounds, set by the loader)
            return view_rows(self.view_tables, batch.index, batch.rounds).to(self.device)
        # online: the teacher sees the same augmented view; undo the student's normalisation
        return self.teacher.run(unnormalize(batch.x, self.data.mean, self.data.std).contiguous()).float()

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
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
                               kd_weight=d.kd_weight, label_smoothing=self.cfg.label_smoothing,
                               kd_reduction=d.kd_reduction)
            return loss, z_ce
        # LSSKD terms on the labeled rows (rotations need labels), DHO's KD term on every row
        out = lsskd_forward(model, batch.x[labeled], batch.y[labeled], self.cfg.lsskd,
                            label_smoothing=self.cfg.label_smoothing)
        kd, _ = dho_loss(z_ce, z_kd, batch.y, labeled, t, temperature=d.temperature, ce_weight=0.0,
                         kd_weight=d.kd_weight, kd_reduction=d.kd_reduction)
        return d.ce_weight * out.loss + kd, z_ce

    # ------------------------------------------------------------------ after training
    @torch.no_grad()
    def on_train_end(self, model: TrainingModel, val_loader: Optional[BatchLoader]) -> Optional[dict]:
        """Search (a, b) on the validation split, store them in the model, return the evidence.

        Returns `{"dho_mix": {...}}`: the pair and where it came from (`search`, `override` or
        `provisional` when there is no validation split), and for a search its validation top-1
        and NLL, the image count and the whole grid (`alphas`, `betas`, `accuracy[b][a]` in %).
        None for a single-head model (nothing to mix).
        """
        if model.kd_head is None:
            return None
        d = self.cfg.dho
        a, b = float(model.mix_alpha), float(model.mix_beta)
        record: dict = {"source": "override" if d.alpha is not None and d.beta is not None else "provisional"}
        is_rank0 = rank_and_world()[0] == 0
        if val_loader is not None and (d.alpha is None or d.beta is None):
            z_ce, z_kd, y = self._collect(model, val_loader)
            alphas = [d.alpha] if d.alpha is not None else list(DEFAULT_ALPHAS)
            betas = [d.beta] if d.beta is not None else list(DEFAULT_BETAS)
            res = search_mix(z_ce, z_kd, y, alphas=alphas, betas=betas)
            a, b = res.alpha, res.beta
            record = {"source": "search", "val_acc_mix": round(res.accuracy, 4), "val_nll_mix": round(res.nll, 5),
                      "n": int(len(y)), "alphas": [float(v) for v in alphas], "betas": [float(v) for v in betas],
                      "accuracy": [[res.grid[(float(va), float(vb))] for va in alphas] for vb in betas]}
            if is_rank0 and self.log:
                self.log(f"dho: mix searched on {len(y)} validation images: a={a:g}, b={b:g} "
                         f"(val top-1 {res.accuracy:.2f}%)")
        elif val_loader is None and self.log and is_rank0 and record["source"] == "provisional":
            self.log(f"dho: no validation split to search the mix on; keeping a={a:g}, b={b:g}")
        a = d.alpha if d.alpha is not None else a
        b = d.beta if d.beta is not None else b
        model.mix_alpha.fill_(a)
        model.mix_beta.fill_(b)
        return {"dho_mix": {"alpha": float(a), "beta": float(b), **record}}

    def _collect(self, model: TrainingModel, loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both heads' logits (N, C) and the labels (N,) on the whole split (gathered from every rank)."""
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
        # every rank searches on the whole split so all pick the same (a, b)
        return all_gather_rows(z_ce), all_gather_rows(z_kd), all_gather_rows(y)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"labeled_idx": torch.from_numpy(np.asarray(self.labeled_idx, dtype=np.int64))}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("labeled_idx")
        if saved is not None and not np.array_equal(saved.numpy(), self.labeled_idx):
            raise CheckpointError("the run's labeled subset differs from the one in its checkpoint "
                                  "(data, seed or --labeled-* options changed)")
