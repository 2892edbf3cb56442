"""An in-memory batch iterator over uint8 tensors, shardable across distributed ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from edgekd.data.transforms import eval_transform, train_transform


def nhwc_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> uint8 NCHW contiguous tensor (kept as uint8: 4x less memory)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, H, W) float, normalised, on the device
    y: torch.Tensor  # (B,) int64 on the device
    index: torch.Tensor  # (B,) int64 positions in the split (CPU), for per-sample buffers


class BatchLoader:
    """Shuffled mini-batches with batched augmentation.

    `train` turns on shuffling and augmentation; `shuffle` (default: `train`) sets shuffling
    alone, so a run without augmentation still sees a new order every epoch.

    Under torch.distributed the permutation of epoch `e` is drawn from `seed * 1000 + e`, so every
    rank draws the same permutation and takes its own interleaved shard, like DistributedSampler:
    with `even_shards` (training: every step is a collective, so every rank must take the same
    number of steps) the permutation is padded by wrapping; without it (evaluation) the shards
    differ by at most one image and every image is counted exactly once.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], *, train: bool, hflip: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", drop_last: Optional[bool] = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 shuffle: Optional[bool] = None, even_shards: bool = True):
        self.x = nhwc_to_tensor(x)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.batch_size = batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.train, self.hflip, self.seed = train, hflip, seed
        self.shuffle = train if shuffle is None else shuffle
        self.even_shards = even_shards
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.epoch = 0
        if self.device.type == "cuda":
            self.x = self.x.pin_memory()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and not self.even_shards:
            return order[self.rank::self.world_size]
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            total = per_rank * self.world_size
            if total > n:  # pad by wrapping, as DistributedSampler does
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank:total:self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self._indices()
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch + 7919 * (self.rank + 1))
        steps = len(self)
        for s in range(steps):
            idx = order[s * self.batch_size:(s + 1) * self.batch_size]
            xb = self.x[idx].to(self.device, non_blocking=True)
            yb = self.y[idx].to(self.device, non_blocking=True)
            if self.train:
                xb = train_transform(xb, self.mean, self.std, self.hflip, g)
            else:
                xb = eval_transform(xb, self.mean, self.std)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield Batch(xb, yb, idx)
