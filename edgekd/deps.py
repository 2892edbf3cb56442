"""The one helper through which optional heavy dependencies are imported."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgekd.errors import MissingDependencyError

# module name -> pip extra (or package) that provides it
_EXTRAS = {
    "tensorrt": "edgekd[tensorrt] (TensorRT ships with JetPack on Jetson; on x86 `pip install tensorrt`)",
    "onnxruntime": "onnxruntime (part of the base install: `pip install edgekd`)",
    "onnx": "edgekd[train]",
    "onnxsim": "edgekd[train]",
    "torch": "edgekd[train] (pin torch with -c constraints.txt)",
    "typer": "edgekd[train]",
    "yaml": "edgekd[train]",
}


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise a one-line error naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised where the extra is absent
        hint = _EXTRAS.get(module.split(".")[0], module)
        raise MissingDependencyError(f"{module} is not installed ({exc}); install {hint}") from None
