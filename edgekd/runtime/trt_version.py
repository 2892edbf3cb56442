"""Which TensorRT releases edgekd builds with, and how each one is asked for a precision.

A pure policy: no TensorRT import. `edgekd.export.tensorrt` (the Python builder), the Jetson kit
(`trtexec` lines) and the tests all decide from here, by the version number and never by probing
for attributes. TensorRT removes APIs only at major versions, so a `hasattr` check cannot tell a
supported release from a broken install. It would also quietly pick a precision path the release
does not mean.

Supported: 8.5 <= TensorRT < 12, without 9.x.

| release | where | precision from | network flag | trtexec |
|---|---|---|---|---|
| 8.5, 8.6 | JetPack 5.1 (8.5.2), 6.0 (8.6.2) | builder flags `FP16`/`INT8` | `EXPLICIT_BATCH` | `--fp16`/`--int8` |
| 10.x | JetPack 6.1/6.2 (10.3), x86 wheels | the network's types | `STRONGLY_TYPED` | `--stronglyTyped` |
| 11.x | x86/SBSA wheels (pip's default) | the network's types (always) | none | none |

- FP16 on the strongly typed path is `model.fp16.onnx` (edgekd.export.fp16). INT8 is the S8S8
  QDQ model on every path (explicit quantization; the INT8 flag on 8.5/8.6 only lets TensorRT
  run the Q/DQ layers in INT8, and no calibrator is ever set).
- 10.x could still take the weak flags (deprecated since 10.12). edgekd uses strong typing there
  too, so 10.x and 11.x engines come from the same ONNX files with the same precision.
- 11.x removed `BuilderFlag.FP16/INT8`, `OBEY/PREFER_PRECISION_CONSTRAINTS`, `int8_calibrator`,
  `trtexec --fp16/--int8/--best`, and the `EXPLICIT_BATCH` member. `STRONGLY_TYPED` is kept
  but deprecated and ignored (every network is strongly typed), and `--stronglyTyped` is "no
  longer needed". So 11.x gets neither (NVIDIA's 10.x-to-11.x migration guide).
- 9.x is refused. It was a limited, LLM-only release line (x86/SBSA data-centre GPUs, never in a
  JetPack, never a general release). Its strongly typed mode predates 10.0's, and no edgekd
  code path has been checked against it.
- 8.4 and older (JetPack 5.0.x) are refused: 8.5 brought the named-tensor inference API that
  `edgekd.runtime.engine` uses (`set_tensor_address`, `execute_async_v3`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from edgekd.errors import EdgekdError
from edgekd.names import MODEL_FP16_ONNX, MODEL_INT8_ONNX, MODEL_ONNX

MIN_VERSION = (8, 5)
MAX_VERSION = (12, 0)  # exclusive
SKIPPED_MAJORS = (9,)
SUPPORTED = "TensorRT 8.5-8.6 (builder flags) or 10.x-11.x (strongly typed)"
# What `pip install edgekd[tensorrt]` may resolve to (pyproject.toml's [tensorrt] extra).
PIP_SPECIFIER = ">=8.5,!=9.*,<12"
# `--jetpack` -> the TensorRT release that JetPack ships. JetPack 5.1.x has 8.5.2. JetPack 6.0 (L4T
# R36.3) still has 8.6.2, so it takes the builder-flag path. JetPack 6.1 and 6.2 (R36.4) have 10.3.
# No JetPack 5 or 6 ships 11.x.
JETPACK_TENSORRT = {"5": "8.5.2", "5.1": "8.5.2", "6.0": "8.6.2", "6": "10.3.0", "6.1": "10.3.0", "6.2": "10.3.0"}
STRONG, FLAGS = "strongly-typed", "builder-flags"


class UnsupportedTensorRTError(EdgekdError):
    """The installed (or requested) TensorRT is outside the supported releases. Exit code 1."""


@dataclass(frozen=True)
class TrtPolicy:
    """How one TensorRT release builds each precision.

    Attributes:
        version: the release as given ('10.3.0', '8.5.2.2').
        release: (major, minor) parsed from it.
        mode: `STRONG` (precision from the network's types) or `FLAGS` (builder flags).
        network_flags: NetworkDefinitionCreationFlag member names to set at network creation.
    """

    version: str
    release: tuple[int, int]
    mode: str
    network_flags: tuple[str, ...]

    @property
    def strongly_typed(self) -> bool:
        return self.mode == STRONG

    def builder_flags(self, precision: str) -> tuple[str, ...]:
        """BuilderFlag member names that select `precision` (none on the strongly typed path)."""
        _check_precision(precision)
        if self.strongly_typed or precision == "fp32":
            return ()
        return ("FP16",) if precision == "fp16" else ("INT8",)

    def onnx_file(self, precision: str) -> str:
        """The export artifact an engine of `precision` is built from on this release."""
        _check_precision(precision)
        if precision == "int8":
            return MODEL_INT8_ONNX
        return MODEL_FP16_ONNX if precision == "fp16" and self.strongly_typed else MODEL_ONNX

    def trtexec_precision_args(self, precision: str) -> list[str]:
        """The trtexec flags that select `precision`, besides the ONNX file itself."""
        _check_precision(precision)
        if not self.strongly_typed:
            return {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}[precision]
        # 10.x: opt in to strong typing; 11.x: always on, the flag is no longer needed
        return ["--stronglyTyped"] if self.release[0] == 10 else []

    def describe(self) -> str:
        """'TensorRT 10.3.0 (strongly typed)' for messages and provenance."""
        return f"TensorRT {self.version} ({'strongly typed' if self.strongly_typed else 'builder flags'})"


def _check_precision(precision: str) -> None:
    if precision not in ("fp32", "fp16", "int8"):
        raise EdgekdError(f"precision must be fp32, fp16 or int8, got {precision!r}")


def parse_version(version: object) -> Optional[tuple[int, int]]:
    """'10.3.0.26' -> (10, 3); '8.6' -> (8, 6); '11' -> (11, 0); None or junk -> None."""
    m = re.match(r"^\s*v?(\d+)(?:\.(\d+))?", str(version)) if version is not None else None
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def policy_for(version: object) -> TrtPolicy:
    """The build policy of a TensorRT release, or a one-line UnsupportedTensorRTError.

    The message names the version and the supported releases. It points pip users at the
    extra's bounds and Jetson users at the JetPack that ships a supported release.
    """
    release = parse_version(version)
    if release is None:
        raise UnsupportedTensorRTError(f"cannot read a TensorRT version from {version!r}; edgekd supports {SUPPORTED}")
    major = release[0]
    if release < MIN_VERSION or release >= MAX_VERSION or major in SKIPPED_MAJORS:
        hint = ("JetPack 5.0.x ships TensorRT 8.4: upgrade to JetPack 5.1+ (8.5)" if release < MIN_VERSION
                else f"install a supported one: pip install 'tensorrt{PIP_SPECIFIER}' (or edgekd[tensorrt])")
        raise UnsupportedTensorRTError(f"TensorRT {version} is not supported; edgekd supports {SUPPORTED}; {hint}")
    if major == 8:
        return TrtPolicy(str(version), release, FLAGS, ("EXPLICIT_BATCH",))
    # 10.x: STRONGLY_TYPED opts in (EXPLICIT_BATCH is implied and deprecated); 11.x: always strongly
    # typed, STRONGLY_TYPED deprecated and ignored, EXPLICIT_BATCH gone
    return TrtPolicy(str(version), release, STRONG, ("STRONGLY_TYPED",) if major == 10 else ())


def policy_for_jetpack(jetpack: object) -> TrtPolicy:
    """The policy of the TensorRT a JetPack ships: '5' -> 8.5, '6.0' -> 8.6, '6' (6.1, 6.2) -> 10.3."""
    key = str(jetpack).strip()
    if key not in JETPACK_TENSORRT:
        raise EdgekdError(f"--jetpack {jetpack!r}: choose 5 (JetPack 5.1, TensorRT 8.5), 6.0 (TensorRT 8.6) "
                          "or 6 (JetPack 6.1/6.2, TensorRT 10.3); JetPack 5.0.x (TensorRT 8.4) is not supported")
    return policy_for(JETPACK_TENSORRT[key])


def installed_policy(trt: ModuleType) -> TrtPolicy:
    """The policy of an imported `tensorrt` module.

    A module without `__version__` is refused, not guessed at. That is what `import tensorrt`
    gives where only `tensorrt-stubs` is installed (a namespace package of .pyi files).
    """
    version = getattr(trt, "__version__", None)
    if not version:
        where = list(getattr(trt, "__path__", []) or [getattr(trt, "__file__", "?")])
        raise UnsupportedTensorRTError(f"the importable `tensorrt` ({where[0] if where else '?'}) has no __version__: "
                                       "it is not a TensorRT install (only type stubs?); install TensorRT, "
                                       f"{SUPPORTED}")
    return policy_for(version)
