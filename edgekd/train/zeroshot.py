"""Zero-shot teachers: an image encoder and class text embeddings (`--teacher zeroshot:ENCODER.onnx,TEXT.npz`).

DHO's paper distils a vision-language model (CLIP) used zero-shot. Here the image tower is any ONNX
model mapping (N, C, H, W) images to (N, D) embeddings, and the class embeddings are a C x D matrix
W (for CLIP: the prompt-ensembled text embeddings; `deploy/clip/export_clip.py` writes both files).
For images x in [0, 1] (the student's augmented view, un-normalised by the teacher loader):

    f = encoder((resize(x) - mean) / std)                         resize to the encoder's H x W
    logits = logit_scale * normalize(f) @ normalize(W).T          (N, C); normalize = row / L2 norm
           [+ cache_alpha * exp(-cache_beta * (1 - normalize(f) @ cache_keys.T)) @ cache_values]

The bracket is Tip-Adapter(-F)'s cache model (Zhang et al. 2022), used when `cache_keys` is given:
`cache_keys` (M, D) are the few-shot training images' normalised embeddings (Tip-Adapter) or the
fine-tuned adapter's weights (-F), used as stored; `cache_values` (M, C) their one-hot labels.

TEXT.npz keys (read with allow_pickle=False):
- `embeddings` (C, D) float, one row per class in the data's class order;
- `class_names` (C,) str, checked against the data's class names (refused when they differ);
- `logit_scale` (default 100, CLIP's learned scale);
- the encoder's preprocessing, when its own metadata does not give it: `input_size` (S or [H, W]),
  `mean`, `std` (one per channel, for images in [0, 1]); an edgekd manifest of the encoder
  (embedded in its metadata or `manifest.json` beside it, `edgekd.runtime.manifest`) supplies
  `input_shape`, `mean` and `std`; keys in the npz win;
- `interpolation`: `bicubic` (default, as CLIP's preprocessing) or `bilinear` (antialiased when
  shrinking, clamped to [0, 1] like the 8-bit image CLIP's pipeline resizes);
- Tip-Adapter-F: `cache_keys`, `cache_values`, `cache_alpha` (1), `cache_beta` (1).

A grayscale dataset is fed to a 3-channel encoder as three equal channels. The teacher's identity
(for the teacher cache) is the hash of both files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.errors import EdgekdError, first_line
from edgekd.io import sha256_file

PREFIX = "zeroshot:"
DEFAULT_LOGIT_SCALE = 100.0
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class TextHead:
    """TEXT.npz: the class embeddings and the encoder's preprocessing it states (None: not stated)."""

    weights: np.ndarray  # (C, D) float32, rows L2-normalised
    class_names: tuple[str, ...]
    logit_scale: float
    input_size: Optional[tuple[int, int]]
    mean: Optional[tuple[float, ...]]
    std: Optional[tuple[float, ...]]
    interpolation: str
    cache_keys: Optional[np.ndarray] = None  # (M, D) float32 (Tip-Adapter-F)
    cache_values: Optional[np.ndarray] = None  # (M, C) float32
    cache_alpha: float = 1.0
    cache_beta: float = 1.0


@dataclass
class ZeroShot:
    """A loaded zero-shot teacher: `run(x01)` maps (N, C, h, w) images in [0, 1] to (N, K) logits."""

    encoder: Path
    text: Path
    sha256: str  # of both files: a new text file is a new teacher (and a new cache entry)
    head: TextHead
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int
    run: Callable[[torch.Tensor], torch.Tensor]

    @property
    def name(self) -> str:
        return f"{self.encoder.name}+{self.text.name}"


def parse_spec(spec: str) -> tuple[Path, Path]:
    """`zeroshot:ENCODER.onnx,TEXT.npz` -> the two paths (which must exist)."""
    parts = [p.strip() for p in spec[len(PREFIX):].split(",")]
    if len(parts) != 2 or not all(parts):
        raise EdgekdError(f"teacher {spec!r}: expected zeroshot:ENCODER.onnx,TEXT.npz")
    enc, text = (Path(p).expanduser() for p in parts)
    for p in (enc, text):
        if not p.is_file():
            raise EdgekdError(f"zero-shot teacher file not found: {p}")
    return enc, text


def _floats(d, key: str, name: str, count: Optional[int] = None) -> Optional[tuple[float, ...]]:
    if key not in d.files:
        return None
    v = np.asarray(d[key], dtype=np.float64).reshape(-1)
    if (count is not None and len(v) != count) or not np.isfinite(v).all():
        what = f"{count} finite number(s)" if count is not None else "finite numbers"
        raise EdgekdError(f"{name}: `{key}` must hold {what}, got {v.tolist()}")
    return tuple(float(x) for x in v)


def _tip_adapter(d, name: str, dim: int, classes: int) -> dict:
    """The optional Tip-Adapter-F cache fields, checked against D and C."""
    if "cache_keys" not in d.files:
        return {}
    if "cache_values" not in d.files:
        raise EdgekdError(f"{name}: Tip-Adapter `cache_keys` given without `cache_values`")
    keys, values = np.asarray(d["cache_keys"], np.float32), np.asarray(d["cache_values"], np.float32)
    if keys.ndim != 2 or keys.shape[1] != dim or values.shape != (len(keys), classes):
        raise EdgekdError(f"{name}: Tip-Adapter `cache_keys` must be (M, {dim}) and `cache_values` (M, {classes}), "
                          f"got {keys.shape} and {values.shape}")
    alpha, beta = (_floats(d, k, name, 1) for k in ("cache_alpha", "cache_beta"))
    return {"cache_keys": keys, "cache_values": values, "cache_alpha": alpha[0] if alpha else 1.0,
            "cache_beta": beta[0] if beta else 1.0}


def read_text_head(path: Path) -> TextHead:
    """Read and check TEXT.npz (see the module docstring); one-line EdgekdError on any problem."""
    try:
        with np.load(path, allow_pickle=False) as d:
            return _parse_text_head(d, path.name)
    except EdgekdError:
        raise
    except Exception as exc:  # noqa: BLE001 - not an npz, or one holding pickled objects
        raise EdgekdError(f"zero-shot text file {path.name}: cannot read ({first_line(exc, 120)})") from None


def _parse_text_head(d, name: str) -> TextHead:
    """The checked fields of an open TEXT.npz `d` (file name `name`, for messages)."""
    missing = [k for k in ("embeddings", "class_names") if k not in d.files]
    if missing:
        raise EdgekdError(f"zero-shot text file {name} lacks {', '.join(missing)} (has {', '.join(d.files)})")
    w = np.asarray(d["embeddings"])
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) or not np.isfinite(w).all():
        raise EdgekdError(f"{name}: `embeddings` must be a finite (classes, dim) float matrix, got {w.dtype} "
                          f"{w.shape}")
    names = tuple(str(s) for s in np.asarray(d["class_names"]).reshape(-1))
    if len(names) != len(w):
        raise EdgekdError(f"{name}: {len(names)} class names for {len(w)} embedding rows")
    norms = np.linalg.norm(w.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise EdgekdError(f"{name}: an embedding row is all zeros")
    scale = _floats(d, "logit_scale", name, 1)
    size = _floats(d, "input_size", name)
    if size is not None and (len(size) not in (1, 2) or min(size) < 1 or any(s != int(s) for s in size)):
        raise EdgekdError(f"{name}: `input_size` must be S or [H, W] (positive integers), got {list(size)}")
    interp = str(d["interpolation"]) if "interpolation" in d.files else "bicubic"
    if interp not in INTERPOLATIONS:
        raise EdgekdError(f"{name}: `interpolation` must be {' or '.join(INTERPOLATIONS)}, got {interp!r}")
    mean, std = _floats(d, "mean", name), _floats(d, "std", name)
    if std is not None and min(std) <= 0:
        raise EdgekdError(f"{name}: `std` must be positive, got {list(std)}")
    tip = _tip_adapter(d, name, w.shape[1], len(w))
    hw = None if size is None else (int(size[0]), int(size[-1]))
    return TextHead((w / norms).astype(np.float32), names, scale[0] if scale else DEFAULT_LOGIT_SCALE, hw,
                    mean, std, interp, **tip)


def head_logits(features: torch.Tensor, head: TextHead) -> torch.Tensor:
    """(N, D) image embeddings -> (N, C) zero-shot logits, float32 (plus the Tip-Adapter term when given)."""
    f = F.normalize(features.float(), dim=1)
    logits = head.logit_scale * f @ torch.from_numpy(head.weights).to(f.device).T
    if head.cache_keys is not None:
        affinity = f @ torch.from_numpy(head.cache_keys).to(f.device).T
        cache = torch.exp(-head.cache_beta * (1.0 - affinity)) @ torch.from_numpy(head.cache_values).to(f.device)
        logits = logits + head.cache_alpha * cache
    return logits


def _preprocessing(enc: Path, sess, head: TextHead) -> tuple[int, tuple[int, int], tuple, tuple]:
    """(channels, (H, W), mean, std) of the encoder: TEXT.npz first, then its edgekd manifest, then its graph."""
    from edgekd.runtime.manifest import locate_manifest
    from edgekd.runtime.session import model_metadata

    manifest = locate_manifest(enc, metadata=model_metadata(sess), prefer_embedded=True)
    shape = list(sess.get_inputs()[0].shape)
    static = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]] if len(shape) == 4 else [None] * 3
    size = head.input_size or (manifest.size if manifest else None)
    if size is None and static[1] and static[2]:
        size = (static[1], static[2])
    mean = head.mean or (manifest.mean if manifest else None)
    std = head.std or (manifest.std if manifest else None)
    if size is None or mean is None or std is None:
        raise EdgekdError(f"zero-shot encoder {enc.name}: its input size, mean and std are not known; give "
                          f"`input_size`, `mean` and `std` in the text file or an edgekd manifest with the encoder")
    channels = static[0] or (manifest.channels if manifest else len(mean))
    if len(mean) != channels or len(std) != channels:
        raise EdgekdError(f"zero-shot encoder {enc.name} takes {channels} channels but mean/std have "
                          f"{len(mean)}/{len(std)} values")
    return channels, (int(size[0]), int(size[1])), tuple(mean), tuple(std)


def load_zeroshot(spec: str, in_channels: int, device: torch.device) -> ZeroShot:
    """Open the encoder, read TEXT.npz, probe the encoder's embedding size; one-line errors."""
    from edgekd.runtime.session import ModelError, available_providers, open_session

    enc, text = parse_spec(spec)
    head = read_text_head(text)
    cuda = device.type == "cuda" and "CUDAExecutionProvider" in available_providers()
    try:  # no spinning: ORT's idle threads would starve torch's, which alternate with them every step
        sess = open_session(enc, threads=max(1, torch.get_num_threads()), spinning=False,
                            providers=["cuda", "cpu"] if cuda else ["cpu"])
    except ModelError as exc:
        raise EdgekdError(f"zero-shot encoder {enc.name}: {first_line(exc)}") from None
    channels, (h, w), mean, std = _preprocessing(enc, sess, head)
    if in_channels not in (channels, 1):
        raise EdgekdError(f"zero-shot encoder {enc.name} takes {channels}-channel images; the data has {in_channels}")
    inp, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def embed(x01: torch.Tensor) -> torch.Tensor:
        x = x01.detach().float()
        if x.shape[1] != channels:  # grayscale data, RGB encoder
            x = x.expand(-1, channels, -1, -1)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode=head.interpolation, align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        x = ((x.cpu() - m) / s).numpy()
        try:
            f = sess.run([out_name], {inp: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except Exception as exc:  # noqa: BLE001 - a graph that rejects the input
            raise EdgekdError(f"zero-shot encoder {enc.name} failed on a ({', '.join(map(str, x.shape))}) batch: "
                              f"{first_line(exc, 120)}") from None
        return torch.from_numpy(np.asarray(f, dtype=np.float32))

    probe = embed(torch.zeros(1, channels, h, w))
    if probe.ndim != 2 or probe.shape[1] != head.weights.shape[1]:
        raise EdgekdError(f"zero-shot encoder {enc.name} outputs {list(probe.shape)} per batch of 1 but "
                          f"{text.name} holds {head.weights.shape[1]}-dim embeddings: expected [1, "
                          f"{head.weights.shape[1]}]")

    def run(x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head_logits(embed(x01), head).to(x01.device)

    sha = hashlib.sha256(f"zeroshot:{sha256_file(enc)}:{sha256_file(text)}".encode()).hexdigest()
    return ZeroShot(enc, text, sha, head, (h, w), mean, std, int(probe.shape[1]), run)
