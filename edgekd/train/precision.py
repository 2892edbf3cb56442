"""Training precision: which autocast dtype a run uses (`--precision fp32|bf16|fp16|auto`).

`auto` picks bf16 autocast where the hardware runs bf16 natively and fp32 elsewhere:
- CPU: bf16 when /proc/cpuinfo lists AMX-BF16 (`amx_bf16`, Sapphire Rapids and later) or
  AVX-512-BF16 (`avx512_bf16`, Cooper Lake, Zen 4 and later); oneDNN then runs convolutions and
  GEMMs in bf16 (measured ~1.7x the fp32 CE step on resnet20, docs/architecture.md "Training precision").
  Without those instructions bf16 is emulated and slower than fp32, so `auto` stays fp32;
- CUDA: bf16 when the GPU supports it (`torch.cuda.is_bf16_supported()`, Ampere and later), else fp32.
`fp16` is CUDA-only and trains with a `torch.amp.GradScaler` (fp16 gradients underflow without one);
bf16 has fp32's exponent range and needs no scaler.

Only the model's forward runs under autocast. Every loss casts its logits to float32 first
(`edgekd.losses`: KL terms, soft targets, binary KL, the PS-KD buffer update), evaluation and the
DHO mix search run in fp32, and the weights and optimizer state stay fp32. The resolved value (never
`auto`) is written to the run's config.yaml and so to every checkpoint's `config`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Iterable, Optional

import torch

from edgekd.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of CPUs with native bf16 matrix instructions
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def read_cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first core (x86 `flags`, aarch64 `Features`); empty when unreadable."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:  # not Linux, or /proc not mounted: no evidence of bf16 hardware
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """Whether the CPU has native bf16 matrix instructions (AMX-BF16 or AVX-512-BF16)."""
    have = read_cpu_flags() if flags is None else frozenset(flags)
    return any(f in have for f in CPU_BF16_FLAGS)


def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on the GPU (Ampere+); emulated bf16 (e.g. a T4) is slower than fp32, so it does not count."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no `including_emulation` (and reports native support only)
        return bool(torch.cuda.is_bf16_supported())


def legacy_amp_precision(amp: str, device: torch.device) -> str:
    """The precision the pre-`precision` config key `amp` meant (auto: CUDA only, on: CPU too, off: never)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return "fp32"
    if device.type == "cuda":
        return "bf16" if _cuda_bf16(device) else "fp16"
    return "bf16"


def resolve_precision(requested: str, device: torch.device, *, cpu_flags: Optional[Iterable[str]] = None,
                      amp: Optional[str] = None) -> str:
    """`fp32`, `bf16` or `fp16` for a run on `device`; raises ConfigError for a precision it cannot train in.

    Args:
        requested: `fp32` | `bf16` | `fp16` | `auto`.
        device: the training device.
        cpu_flags: the CPU's feature flags (default: read from /proc/cpuinfo); tests pass their own.
        amp: the legacy config key (a run stored before `precision` existed); used only with `auto`.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose {', '.join(PRECISIONS)}")
    if requested == "auto":
        if amp is not None:
            return legacy_amp_precision(amp, device)
        if device.type == "cuda":
            return "bf16" if _cuda_bf16(device) else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_bf16(cpu_flags) else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 trains on CUDA only (with a gradient scaler); on a CPU use bf16 or fp32")
    if requested == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise ConfigError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    return requested


def autocast(precision: str, device: torch.device) -> ContextManager[Any]:
    """The forward pass's autocast context for a resolved precision (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for fp16 (None otherwise: fp32 and bf16 gradients do not underflow)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


__all__ = ["PRECISIONS", "CPU_BF16_FLAGS", "read_cpu_flags", "cpu_has_bf16", "resolve_precision", "autocast",
           "make_grad_scaler", "legacy_amp_precision"]
