"""The one helper through which optional heavy dependencies are imported."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgekd.errors import MissingDependencyError, first_line

# module name -> pip extra (or package) that provides it
_EXTRAS = {
    "tensorrt": "edgekd[tensorrt] (TensorRT ships with JetPack on Jetson; on x86 `pip install tensorrt`)",
    "onnxruntime": "onnxruntime (part of the base install: `pip install edgekd`)",
    "openvino": "edgekd[openvino] (`pip install openvino`: x86-64 and aarch64 CPUs)",
    "onnx": "edgekd[train]",
    "onnxsim": "edgekd[train]",
    "onnxscript": "edgekd[train]",
    "matplotlib": "edgekd[plot] (pictures only: `pip install matplotlib`)",
    "onnxconverter_common": "edgekd[train] (the FP16 export: `pip install onnxconverter-common`)",
    "torch": "edgekd[train] (pin torch with -c constraints.txt)",
    "typer": "edgekd[train]",
    "yaml": "edgekd[train]",
}


def install_hint(module: str) -> str:
    """What to install for a module: its extra (`edgekd[train]`, ...), else the module's own name."""
    return _EXTRAS.get(module.split(".")[0], module)


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise a one-line error naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised where the extra is absent
        hint = install_hint(module)
        raise MissingDependencyError(f"{module} is not installed ({first_line(exc)}); install {hint}") from None
