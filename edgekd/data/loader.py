"""A batch iterator over uint8 images, in memory or on disk, shardable across distributed ranks.

Native-size arrays are held as one uint8 NCHW tensor and gathered per batch. `ImageRows` (the
fixed-size regime, edgekd.data.images; possibly an on-disk store) are read batch by batch in a
background thread, `prefetch` batches ahead, so disk reads overlap the training step and memory
stays at a few batches whatever the dataset's size. Under DDP each rank reads only its own shard.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import numpy as np
import torch

from edgekd.data.images import ImageRows, View
from edgekd.data.transforms import batch_transform

T = TypeVar("T")
U = TypeVar("U")


def nhwc_to_tensor(x: Any) -> torch.Tensor:
    """uint8 NHWC images -> uint8 NCHW contiguous tensor (kept as uint8: 4x less memory).

    `ImageRows` are read whole into memory: for a bounded batch, index them first (`x[idx]`).
    """
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def prefetch(read: Callable[[T], U], items: Sequence[T], depth: int = 2) -> Iterator[U]:
    """Yield `read(item)` for each item in order, computed up to `depth` items ahead in a background thread.

    Memory holds at most depth + 2 results. Closing the iterator early (a `break` in the consumer)
    stops the thread; an exception in `read` is raised in the consumer.
    """
    if depth <= 0:
        for it in items:
            yield read(it)
        return
    q: "queue.Queue[tuple[bool, Any]]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for it in items:
                if stop.is_set() or not put((True, read(it))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=work, name="edgekd-prefetch", daemon=True)
    thread.start()
    try:
        for _ in range(len(items)):
            ok, value = q.get()
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=10)


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

    `x` is a uint8 (N, H, W, C) array, or `ImageRows` (the fixed-size regime); `view` (default: the
    rows' own) selects random-resized crops for training and centre crops for evaluation.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], *, train: bool, hflip: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", drop_last: Optional[bool] = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 shuffle: Optional[bool] = None, even_shards: bool = True, view: Optional[View] = None,
                 prefetch: int = 2):
        self.rows = x if isinstance(x, ImageRows) else None
        self.view = view if view is not None else getattr(self.rows, "view", None)
        self.prefetch_depth = prefetch
        self.x = None if self.rows is not None else nhwc_to_tensor(x)
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
        if self.device.type == "cuda" and self.x is not None:
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

    def read_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) images of split positions `idx` from `ImageRows` (channels-last; pinned on CUDA)."""
        xb = torch.from_numpy(self.rows.read(idx.numpy())).permute(0, 3, 1, 2)
        return xb.pin_memory() if self.device.type == "cuda" else xb

    def __iter__(self) -> Iterator[Batch]:
        order = self._indices()
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch + 7919 * (self.rank + 1))
        steps = len(self)
        batches = [order[s * self.batch_size:(s + 1) * self.batch_size] for s in range(steps)]
        if self.rows is not None:
            images = prefetch(self.read_rows, batches, self.prefetch_depth)
        else:
            images = (self.x[idx] for idx in batches)
        for idx, xb in zip(batches, images):
            xb = xb.to(self.device, non_blocking=True)
            yb = self.y[idx].to(self.device, non_blocking=True)
            xb = batch_transform(xb, self.mean, self.std, train=self.train, hflip=self.hflip, generator=g,
                                 view=self.view)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            elif self.rows is not None:
                xb = xb.contiguous()  # rows arrive channels-last; keep the native path's NCHW layout
            yield Batch(xb, yb, idx)
