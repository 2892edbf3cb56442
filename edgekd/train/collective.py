"""Rank collectives: who am I, on which device, and what every rank must agree on.

The one low module of `edgekd.train` that talks to `torch.distributed` during a run. Every
function is a no-op (or the single-process answer) when no process group is initialised, so the
fit loop and the methods call them unconditionally. Nothing here imports the loop, the methods
or the launcher (`edgekd.train.distributed` keeps the launcher and the worker entry).

torch is imported inside the functions: `edgekd.train.distributed` imports this module in the
launcher process, which must set torch's C++ log level before torch is first imported.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from edgekd.errors import EdgekdError, first_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn


class PeerFailedError(EdgekdError):
    """This rank stopped because another rank failed (the other rank reports the cause)."""


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank(default: int = 0) -> int:
    """This process's index on its node (torchrun's LOCAL_RANK), `default` outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", default))


def resolve_device(name: str) -> "torch.device":
    """`auto` | `cpu` | `cuda` -> a torch.device; `cuda` without a CUDA device is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgekdError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def rank_device(name: str) -> "torch.device":
    """The device this rank trains on: `resolve_device`, pinned to GPU LOCAL_RANK under DDP on CUDA."""
    import torch

    device = resolve_device(name)
    if rank_and_world()[1] > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def share_from_rank0(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and give its result (or its error) to every rank.

    Used for work that touches the run directory (checks, config.yaml, reading last.pt) so
    that all ranks take the same branch: a failure on rank 0 is raised on every rank (as
    `PeerFailedError` on the others) instead of leaving them waiting in a collective. The value
    travels by pickle between this run's own processes.
    """
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1:
        return fn()
    box: list = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except EdgekdError as exc:
            box[0] = ("error", first_line(exc))
            dist.broadcast_object_list(box, src=0)
            raise
        except BaseException as exc:
            box[0] = ("error", f"rank 0 failed: {type(exc).__name__}: {first_line(exc)}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error" and rank != 0:
        raise PeerFailedError(value)
    return value


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        dist.barrier()


def broadcast_state_from_rank0(module: "nn.Module", buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (or only buffers) to every rank, in place.

    DDP keeps parameters equal but each rank updates its own BatchNorm running statistics after
    the last broadcast; evaluating with rank 0's buffers makes every rank score the model that
    rank 0 saves.
    """
    import torch.distributed as dist

    if rank_and_world()[1] == 1:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        dist.broadcast(t.data, src=0)


def all_reduce_sums(sums: dict[str, float], device: "torch.device") -> dict[str, float]:
    """Sum a dict of counters over the ranks (every rank must hold the same keys); identity in one process."""
    import torch
    import torch.distributed as dist

    if rank_and_world()[1] == 1:
        return sums
    keys = sorted(sums)  # the same order on every rank
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    reduced = dict(zip(keys, t.tolist()))
    return {k: reduced[k] for k in sums}  # the caller's order (heads are logged in it)


def all_reduce_(t: "torch.Tensor") -> "torch.Tensor":
    """Sum `t` over the ranks, in place; returns `t` (unchanged in one process)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t


def all_gather_rows(t: "torch.Tensor") -> "torch.Tensor":
    """Every rank's `t` concatenated along dim 0 in rank order; the row counts may differ (uneven shards)."""
    import torch
    import torch.distributed as dist

    world = rank_and_world()[1]
    if world == 1:
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    rows = max(int(k) for k in counts)
    padded = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(k)] for p, k in zip(parts, counts)])
