"""Semi-supervised splits and a loader that mixes labeled and unlabeled images (DHO).

The labeled subset is class-balanced and deterministic per seed; everything else in the
training split is the unlabeled pool (its labels are never handed to the loss: unlabeled rows
carry label -1). Batches hold `n_labeled` labeled images followed by unlabeled ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from edgekd.data.images import ImageRows
from edgekd.data.loader import Batch, nhwc_to_tensor
from edgekd.data.transforms import batch_transform, normalize
from edgekd.data.views import ViewPlan
from edgekd.errors import ConfigError, DataError

UNLABELED = -1  # label given to unlabeled rows of a batch


def select_labeled(y: np.ndarray, fraction: Optional[float] = None, per_class: Optional[int] = None,
                   seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-balanced labeled subset of `y`.

    `per_class` takes exactly that many images of every class; `fraction` takes
    max(1, round(fraction * count_c)) of each class c. Neither given: every image is labeled.
    The choice depends only on (y, seed), so runs and resumes agree.
    """
    y = np.asarray(y)
    if fraction is not None and per_class is not None:
        raise ConfigError("give either --labeled-fraction or --labeled-per-class, not both")
    if fraction is None and per_class is None:
        return np.arange(len(y))
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--labeled-fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ConfigError(f"--labeled-per-class must be >= 1, got {per_class}")
    # its own random stream: independent of the validation split
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E515]))
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = per_class if per_class is not None else max(1, int(round(fraction * len(idx))))
        if k > len(idx):
            raise DataError(f"--labeled-per-class {k} exceeds the {len(idx)} training images of class {int(c)}")
        chosen.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(chosen))


@dataclass
class SemiSupBatch(Batch):
    labeled: torch.Tensor  # (B,) bool on the device; y is UNLABELED where False
    rounds: Optional[torch.Tensor] = None  # (B,) int64 CPU: each row's view round, with fixed views (a ViewPlan)


class _Stream:
    """An endless, deterministic stream of this rank's share of `pool`, one permutation per cycle."""

    def __init__(self, pool: np.ndarray, seed: int, salt: int, rank: int, world_size: int):
        self.pool = torch.from_numpy(np.asarray(pool, dtype=np.int64))
        self.seed, self.salt, self.rank, self.world = seed, salt, rank, world_size
        self.per_rank = -(-len(self.pool) // world_size)

    def _cycle(self, k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + k * 7919 + self.salt) % (2**63))
        order = self.pool[torch.randperm(len(self.pool), generator=g)]
        total = self.per_rank * self.world
        if total > len(order):  # pad by wrapping, as DistributedSampler does
            order = torch.cat([order, order[: total - len(order)]])
        return order[self.rank:total:self.world]

    def take(self, start: int, count: int) -> torch.Tensor:
        """Positions [start, start + count) of this rank's stream."""
        if count == 0:
            return torch.zeros(0, dtype=torch.int64)
        first, last = start // self.per_rank, (start + count - 1) // self.per_rank
        chunk = torch.cat([self._cycle(k) for k in range(first, last + 1)])
        off = start - first * self.per_rank
        return chunk[off:off + count]

    def cycles(self, start: int, count: int) -> torch.Tensor:
        """The pass (permutation cycle) each of positions [start, start + count) belongs to, int64."""
        return torch.arange(start, start + count, dtype=torch.int64) // self.per_rank


class SemiSupLoader:
    """Mini-batches of `n_labeled` labeled + `batch_size - n_labeled` unlabeled training images.

    One epoch is len(x) // (batch_size * world_size) steps whatever the mix, so CE-only,
    single-head KD and DHO runs see the same number of images per epoch; each pool is an
    endless stream of per-cycle permutations (labeled images repeat within an epoch when the
    pool is small). Each rank takes an interleaved share of every permutation, like
    `BatchLoader`. `Batch.index` holds positions in `x` (for per-sample teacher caches).

    `views` (a `ViewPlan`, training only) replaces the random augmentation by fixed views: the k-th
    pass of a stream over its pool takes round k mod R, `SemiSupBatch.rounds` says which per row.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, labeled_idx: np.ndarray, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], *, unlabeled_ratio: float = 1.0,
                 train: bool = True, hflip: bool = True, seed: int = 0, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 views: Optional[ViewPlan] = None):
        n = len(y)
        labeled_idx = np.asarray(labeled_idx, dtype=np.int64)
        mask = np.zeros(n, dtype=bool)
        mask[labeled_idx] = True
        unlabeled_idx = np.flatnonzero(~mask)
        if unlabeled_ratio < 0:
            raise ConfigError(f"dho.unlabeled_ratio must be >= 0, got {unlabeled_ratio}")
        if len(unlabeled_idx) == 0 or unlabeled_ratio == 0:
            n_lab = batch_size
        else:
            n_lab = min(batch_size - 1, max(1, int(round(batch_size / (1.0 + unlabeled_ratio)))))
        if len(labeled_idx) < world_size:
            raise DataError(f"{len(labeled_idx)} labeled images cannot be shared by {world_size} processes")
        # ImageRows (the fixed-size regime, maybe on disk) are read per batch and carry their view
        self.rows = x if isinstance(x, ImageRows) else None
        self.view = getattr(self.rows, "view", None)
        self.x = None if self.rows is not None else nhwc_to_tensor(x)
        y_masked = np.where(mask, np.asarray(y, dtype=np.int64), UNLABELED)
        self.y = torch.from_numpy(y_masked)
        self.labeled_mask = torch.from_numpy(mask)
        self.batch_size, self.n_labeled = batch_size, n_lab
        self.mean, self.std = tuple(mean), tuple(std)
        self.train, self.hflip, self.seed = train, hflip, seed
        self.device = torch.device(device)
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.labeled = _Stream(labeled_idx, seed, 1, rank, world_size)
        self.unlabeled = _Stream(unlabeled_idx, seed, 2, rank, world_size) if n_lab < batch_size else None
        self.steps = n // (batch_size * world_size)
        self.epoch = 0
        self.views = views if train else None
        if self.device.type == "cuda" and self.x is not None:
            self.x = self.x.pin_memory()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[SemiSupBatch]:
        n_lab, n_unl = self.n_labeled, self.batch_size - self.n_labeled
        lab = self.labeled.take(self.epoch * self.steps * n_lab, self.steps * n_lab)
        unl = self.unlabeled.take(self.epoch * self.steps * n_unl, self.steps * n_unl) if self.unlabeled else None
        rounds = None
        if self.views is not None:  # each row's pass over its pool -> its view round
            rounds = [self.views.round_of(self.labeled.cycles(self.epoch * self.steps * n_lab, self.steps * n_lab))]
            if unl is not None:
                cyc = self.unlabeled.cycles(self.epoch * self.steps * n_unl, self.steps * n_unl)
                rounds.append(self.views.round_of(cyc))
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch + 7919 * (self.rank + 1))
        for s in range(self.steps):
            parts = [lab[s * n_lab:(s + 1) * n_lab]]
            if unl is not None:
                parts.append(unl[s * n_unl:(s + 1) * n_unl])
            idx = torch.cat(parts)
            rows = self.rows
            xb = self.x[idx] if rows is None else torch.from_numpy(rows.read(idx.numpy())).permute(0, 3, 1, 2)
            xb = xb.to(self.device, non_blocking=True)
            yb = self.y[idx].to(self.device, non_blocking=True)
            lb = self.labeled_mask[idx].to(self.device, non_blocking=True)
            rb = None
            if rounds is not None:
                rb = torch.cat([rounds[0][s * n_lab:(s + 1) * n_lab]]
                               + ([rounds[1][s * n_unl:(s + 1) * n_unl]] if len(rounds) > 1 else []))
                xb = normalize(self.views.apply(xb, idx, rb), self.mean, self.std)
            else:
                xb = batch_transform(xb, self.mean, self.std, train=self.train, hflip=self.hflip, generator=g,
                                     view=self.view)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield SemiSupBatch(xb, yb, idx, lb, rb)
