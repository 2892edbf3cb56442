"""A procedural 10-class colour image task at 32x32, deterministic per seed, fully offline.

Each image shows one of ten shapes (the class) with random foreground and background colours,
position, scale, a small rotation, a background gradient and pixel noise. Colour carries no
label information, so a model has to learn shape; a small CNN reaches ~90% in a minute on 2 cores.

At 64 px and more (`synthetic:size=224`, the real-resolution regime) the images also get detail
at every scale, as photographs have: a smooth cloudy background, a fine-grained texture on the
background and on the shape, drawn per image. It carries no label either. No real 224-px
photographs are available offline, so this variant (and upsampled CIFAR-10) stands in for them in
tests and benchmarks of the 224-px path. Images are rendered in chunks of about 2M pixels, so
memory stays bounded at any size. Sizes below 64 draw exactly the images they always did.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = (
    "disk", "ring", "square", "cross", "triangle",
    "hstripes", "vstripes", "checker", "twodots", "xcross",
)


def _shape(k: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask of shape class `k` in rotated coords u, v with radius r (broadcastable arrays)."""
    rad = np.sqrt(u * u + v * v)
    au, av = np.abs(u), np.abs(v)
    if k == 0:
        return rad < r
    if k == 1:
        return np.abs(rad - 0.7 * r) < 0.22 * r
    if k == 2:
        return np.maximum(au, av) < 0.8 * r
    if k == 3:
        return ((au < 0.25 * r) & (av < r)) | ((av < 0.25 * r) & (au < r))
    if k == 4:
        return (v > -0.6 * r) & (v < 0.8 * r) & (au < (0.8 * r - v) * 0.6)
    if k == 5:
        return (rad < r) & (np.sin(v * 2 * np.pi / (0.55 * r)) > 0)
    if k == 6:
        return (rad < r) & (np.sin(u * 2 * np.pi / (0.55 * r)) > 0)
    if k == 7:
        return (np.maximum(au, av) < 0.85 * r) & (np.sin(u * np.pi / (0.42 * r)) * np.sin(v * np.pi / (0.42 * r)) > 0)
    if k == 8:
        return ((u - 0.55 * r) ** 2 + v * v < (0.35 * r) ** 2) | ((u + 0.55 * r) ** 2 + v * v < (0.35 * r) ** 2)
    return (rad < r) & ((np.abs(u - v) < 0.3 * r) | (np.abs(u + v) < 0.3 * r))


def _masks(cls: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean shape masks (N, S, S) for class ids `cls`, in per-sample rotated coords u, v.

    Each image's mask is computed for its own class only (elementwise, so the pixels are those of
    computing every shape for every image and selecting).
    """
    out = np.zeros(u.shape, dtype=bool)
    for k in range(len(CLASS_NAMES)):
        sel = cls == k
        if sel.any():
            out[sel] = _shape(k, u[sel], v[sel], r[sel])
    return out


DETAIL_SIZE = 64  # from this size on, images carry multi-scale detail (module docstring)


def smooth_noise(rng: np.random.Generator, m: int, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Value noise in [-1, 1]: a random (cells + 1)^2 lattice per image and channel, bilinearly
    interpolated to (m, size, size, channels) float32; `cells` sets the feature scale (size / cells px)."""
    cells = max(1, cells)
    lattice = rng.uniform(-1, 1, (m, cells + 1, cells + 1, channels)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = (t - i0)[None, :, None, None]
    rows = lattice[:, i0] * (1 - f) + lattice[:, i0 + 1] * f  # (m, size, cells + 1, 3)
    f = f.reshape(1, 1, size, 1)
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def make_synthetic(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n, size, size, 3), labels int64 (n,)), balanced over 10 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    grid = np.arange(size, dtype=np.float32) + 0.5
    chunk = min(2048, max(1, 2048 * 32 * 32 // (size * size)))  # ~2M pixels of float32 temporaries per chunk
    for start in range(0, n, chunk):
        cls = labels[start:start + chunk]
        m = len(cls)
        s = size / 32.0
        cx = rng.uniform(11, 21, m).astype(np.float32)[:, None, None] * s
        cy = rng.uniform(11, 21, m).astype(np.float32)[:, None, None] * s
        r = rng.uniform(6.5, 10.5, m).astype(np.float32)[:, None, None] * s
        th = rng.uniform(-0.3, 0.3, m).astype(np.float32)[:, None, None]
        dx = grid[None, None, :] - cx
        dy = grid[None, :, None] - cy
        u = np.cos(th) * dx + np.sin(th) * dy
        v = -np.sin(th) * dx + np.cos(th) * dy
        mask = _masks(cls, u, v, r)[..., None]
        fg = rng.uniform(0, 1, (m, 1, 1, 3)).astype(np.float32)
        bg = rng.uniform(0, 1, (m, 1, 1, 3)).astype(np.float32)
        # keep enough contrast: push the background away from the foreground
        close = np.abs(fg - bg).mean(axis=-1, keepdims=True) < 0.3
        bg = np.where(close, 1.0 - fg, bg)
        ramp = (grid / size - 0.5)[None, None, :, None] * rng.uniform(-0.4, 0.4, (m, 1, 1, 3)).astype(np.float32)
        back = bg + ramp
        if size >= DETAIL_SIZE:  # extra draws only here: smaller sizes keep their images
            # coloured clouds; fine grain in luminance only (as film grain or sensor noise)
            back = back + 0.15 * smooth_noise(rng, m, size, 4) + 0.06 * smooth_noise(rng, m, size, size // 8, 1)
            fg = fg + 0.07 * smooth_noise(rng, m, size, size // 6, 1)
        img = np.where(mask, fg, back)
        img = img + rng.normal(0, 0.08, img.shape).astype(np.float32)
        images[start:start + m] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)
