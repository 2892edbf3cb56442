"""Batched tensor augmentations: the whole batch is augmented at once on the training device.

Augmenting uint8 batches in one vectorised step (instead of per-image PIL transforms in worker
processes) keeps the loader far off the critical path on 2-core machines.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float in [0, 1]."""
    return x_uint8.float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop(x: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to the input size at a random offset per image."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    bi = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def train_transform(x_uint8: torch.Tensor, mean, std, hflip: bool, generator: Optional[torch.Generator],
                    padding: int = 4) -> torch.Tensor:
    """Crop with padding, optional horizontal flip, normalise. Input uint8 (N, C, H, W)."""
    x = to_float(x_uint8)
    x = random_crop(x, padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    return normalize(x, mean, std)


def eval_transform(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    return normalize(to_float(x_uint8), mean, std)
