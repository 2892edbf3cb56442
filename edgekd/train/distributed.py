"""Process-level entry for training; torch.distributed launch lives here."""

from __future__ import annotations

from edgekd.config import TrainConfig


def train_entry(cfg: TrainConfig):
    """Train in this process (single process)."""
    from edgekd.train.loop import train

    return train(cfg)


def launch(nproc: int, argv: list[str]) -> int:  # pragma: no cover - replaced by the DDP issue
    from edgekd.errors import EdgekdError

    raise EdgekdError("--nproc-per-node is not available yet")
