"""Checkpoints: plain tensors and primitives only, so `torch.load(weights_only=True)` reads them.

Written atomically (temp file + rename). A checkpoint carries everything needed to rebuild the
`TrainingModel` and to resume (docs/architecture.md, "Checkpoints"): resolved config, model name
and arguments, class names, input shape, normalisation, epoch, optimizer state, method state, RNG
state and the edgekd version; after training, `train_end` holds what the method decided then
(e.g. DHO's mix search). `build_payload` is the one function that assembles it.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import nn

from edgekd import __version__
from edgekd.config import TrainConfig, config_from_dict, config_to_dict
from edgekd.errors import CheckpointError, first_line
from edgekd.io import write_bytes_atomic
from edgekd.models import build_model
from edgekd.train.model import TrainingModel, build_training_model

FORMAT = "edgekd-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_name", "model_kwargs", "model_state", "config", "class_names", "input_shape", "mean", "std")


class DataFacts(Protocol):
    """What a checkpoint records about the data (an `ImageData` has all of it)."""

    spec: str
    class_names: Sequence[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: Sequence[float]
    std: Sequence[float]


def build_payload(cfg: TrainConfig, model: nn.Module, data: DataFacts, *, epoch: int = 0, global_step: int = 0,
                  best_val_acc: float = -1.0, val_acc: Optional[float] = None, metrics: Optional[dict] = None,
                  optimizer_state: Optional[dict] = None, method_state: Optional[dict] = None,
                  world_size: int = 1, rng_torch: Optional[torch.Tensor] = None,
                  train_end: Optional[dict] = None) -> dict[str, Any]:
    """The checkpoint payload of `model` (a `TrainingModel`) trained as `cfg` on `data`.

    Every checkpoint edgekd writes (last.pt, best.pt, the finished best.pt, test fixtures) is
    built here. Weights are copied to CPU; `rng_torch` defaults to the current CPU RNG state.
    `val_acc`, `metrics` and `train_end` are left out when None.
    """
    c = int(data.input_shape[0])
    payload: dict[str, Any] = {
        "model_name": cfg.model, "model_kwargs": {"num_classes": len(data.class_names), "in_channels": c},
        "model_state": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "optimizer": optimizer_state if optimizer_state is not None else {},
        "method_state": method_state if method_state is not None else {},
        "config": config_to_dict(cfg), "class_names": list(data.class_names),
        "input_shape": [int(v) for v in data.input_shape], "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std], "output_kind": getattr(model, "output_kind", "logits"),
        "data_spec": data.spec, "epoch": int(epoch), "global_step": int(global_step),
        "best_val_acc": float(best_val_acc), "world_size": int(world_size),
        "rng_torch": rng_torch if rng_torch is not None else torch.get_rng_state(),
    }
    view = getattr(data, "view", None)  # fixed-size regime: size, stored side, crops (edgekd.data.images.View)
    extras = {"val_acc": val_acc, "metrics": metrics, "train_end": train_end, "view": view.to_dict() if view else None}
    payload.update({k: v for k, v in extras.items() if v is not None})
    return payload


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` plus format markers to `path` atomically (a full disk: one-line WriteError, old file kept)."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "edgekd_version": __version__, **payload}
    buf = io.BytesIO()  # torch.save reports a full disk as an opaque RuntimeError; a plain write as ENOSPC
    torch.save(data, buf)
    write_bytes_atomic(path, buf.getbuffer())


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
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError,
            AttributeError) as exc:
        text = str(exc).strip()
        if not text or text.startswith("Weights only load failed"):
            reason = "holds objects other than tensors and primitives" if text else type(exc).__name__
        else:
            reason = first_line(exc, 120)
        if isinstance(exc, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)) or "zip" in text.lower():
            reason = "not a torch checkpoint file, or truncated"
        raise CheckpointError(f"{p} is not a readable edgekd checkpoint ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an edgekd checkpoint (no edgekd format marker)")
    if not isinstance(data.get("format_version", 0), int):
        raise CheckpointError(f"{p}: checkpoint field 'format_version' must be an integer")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer edgekd ({data.get('edgekd_version')}); upgrade edgekd")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{p} is an incomplete edgekd checkpoint (missing {', '.join(missing)})")
    check_fields(data, p)
    data["path"] = str(p)
    return data


def check_fields(data: dict[str, Any], p: Path) -> None:
    """The fields every reader trusts: a forged or damaged checkpoint fails here in one line, not in torch."""
    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(f"{p}: checkpoint field {key!r} must be {want}, got {data.get(key)!r:.60}")

    shape, names, kwargs = data["input_shape"], data["class_names"], data["model_kwargs"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise bad("input_shape", "three positive integers (C, H, W)")
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
        raise bad("class_names", "a non-empty list of strings")
    if not isinstance(data["model_name"], str) or not isinstance(kwargs, dict):
        raise bad("model_name" if not isinstance(data["model_name"], str) else "model_kwargs", "a name and a mapping")
    n = kwargs.get("num_classes", len(names))
    if not isinstance(n, int) or n != len(names):
        raise CheckpointError(f"{p}: checkpoint has {len(names)} class names but num_classes {n!r}")
    for key in ("mean", "std"):
        v = data[key]
        if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v)):
            raise bad(key, "a list of numbers (per channel)")
    if any(x <= 0 for x in data["std"]):
        raise bad("std", "positive")


def rebuild_training_model(ckpt: dict[str, Any], device: Optional[torch.device] = None) -> TrainingModel:
    """Rebuild the `TrainingModel` (student + training-only parts) a checkpoint was saved from, in eval mode.

    The modules come from `build_training_model` with the checkpoint's stored config, as in
    training; no method object, data or teacher is involved.
    """
    cfg = config_from_dict(ckpt["config"])
    device = device or torch.device("cpu")
    student = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model = build_training_model(cfg, student)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit the model "
                              f"({first_line(exc)})") from None
    return model.to(device).eval()


def training_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The training-progress part of a checkpoint, as `build_payload` keyword arguments.

    `build_payload(cfg, model, data, **training_state(ckpt))` writes a checkpoint at the same point
    of training with other weights (the finished best.pt after a method's end-of-training step).
    """
    return {"epoch": int(ckpt.get("epoch", 0)), "global_step": int(ckpt.get("global_step", 0)),
            "best_val_acc": float(ckpt.get("best_val_acc", -1.0)), "val_acc": ckpt.get("val_acc"),
            "metrics": ckpt.get("metrics"), "optimizer_state": ckpt.get("optimizer"),
            "method_state": ckpt.get("method_state"), "world_size": int(ckpt.get("world_size", 1)),
            "rng_torch": ckpt.get("rng_torch")}
