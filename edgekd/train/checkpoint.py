"""Checkpoints: plain tensors and primitives only, so `torch.load(weights_only=True)` reads them.

Written atomically (temp file + rename). A checkpoint carries everything needed to rebuild the
`TrainingModel` and to resume: resolved config, model name and arguments, class names, input
shape, normalisation, epoch, optimizer state, method state, RNG state and the edgekd version.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from edgekd import __version__
from edgekd.errors import CheckpointError
from edgekd.io import atomic_path

FORMAT = "edgekd-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_name", "model_kwargs", "model_state", "config", "class_names", "input_shape", "mean", "std")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` plus format markers to `path` atomically."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "edgekd_version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an edgekd checkpoint; any other file gives a one-line CheckpointError."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                p = p / name
                break
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        text = str(exc).strip()
        if not text or text.startswith("Weights only load failed"):
            reason = "holds objects other than tensors and primitives" if text else type(exc).__name__
        else:
            reason = text.splitlines()[0][:120]
        if isinstance(exc, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)) or "zip" in text.lower():
            reason = "not a torch checkpoint file, or truncated"
        raise CheckpointError(f"{p} is not a readable edgekd checkpoint ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an edgekd checkpoint (no edgekd format marker)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer edgekd ({data.get('edgekd_version')}); upgrade edgekd")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{p} is an incomplete edgekd checkpoint (missing {', '.join(missing)})")
    data["path"] = str(p)
    return data


def rebuild_training_model(ckpt: dict[str, Any], device: Optional[torch.device] = None):
    """Rebuild the `TrainingModel` (student + training-only parts) a checkpoint was saved from."""
    from edgekd.config import config_from_dict
    from edgekd.models import build_model
    from edgekd.train.methods import build_method

    cfg = config_from_dict(ckpt["config"])
    device = device or torch.device("cpu")
    student = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    method = build_method(cfg, None, device)
    model = method.build(student)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()
