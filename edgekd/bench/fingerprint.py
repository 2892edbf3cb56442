"""The environment a benchmark ran in, stored in every report so numbers can be interpreted.

CPU model, cores, instruction-set flags (AVX-512, VNNI, AMX, NEON: they decide INT8 and bf16
speed), load average, thread settings, package versions (read from installed metadata: nothing
heavy is imported just to learn a version), CUDA and GPU when present; on a Jetson the L4T
release, nvpmodel power mode and clocks; on a Raspberry Pi the board model.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any, Optional

PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "openvino", "numpy", "onnx")


def read_text(path: str, limit: int = 4096) -> Optional[str]:
    """A small system file's text (NULs stripped, as in device-tree strings), or None."""
    try:
        with open(path, "rb") as f:
            return f.read(limit).replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return None


def run_quietly(cmd: list[str], timeout: float = 5.0) -> Optional[str]:
    """A tool's stdout, or None when it is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def cpu_model() -> str:
    text = read_text("/proc/cpuinfo", 1 << 16) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, Optional[str]]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cuda_info() -> dict[str, Any]:
    """CUDA version and GPU name: from torch when it is already loaded, else nvidia-smi."""
    info: dict[str, Any] = {"cuda": None, "gpu": None, "driver": None}
    torch = sys.modules.get("torch")  # only when a torch runner already imported it
    if torch is not None:
        info["cuda"] = torch.version.cuda
        try:
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
                info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        except Exception:  # a broken driver must not break a report
            pass
    smi = run_quietly(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        name, _, driver = smi.splitlines()[0].partition(",")
        info["gpu"] = info["gpu"] or name.strip()
        info["driver"] = driver.strip() or None
    return info


def jetson_info() -> Optional[dict[str, Any]]:
    """L4T release, nvpmodel power mode and clocks on an NVIDIA Jetson; None elsewhere."""
    release = read_text("/etc/nv_tegra_release")
    if release is None:
        return None
    cpu_freqs = [read_text(p) for p in sorted(glob.glob("/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq"))]
    gpu_freq = None
    for pattern in ("/sys/devices/gpu.0/devfreq/*/cur_freq", "/sys/devices/platform/*gpu*/devfreq/*/cur_freq",
                    "/sys/devices/platform/bus@0/*gpu*/devfreq/*/cur_freq"):
        hits = glob.glob(pattern)
        if hits:
            gpu_freq = read_text(hits[0])
            break
    return {
        "l4t_release": release.splitlines()[0],
        "power_mode": run_quietly(["nvpmodel", "-q"]),
        "cpu_freq_khz": [int(f) for f in cpu_freqs if f and f.isdigit()],
        "gpu_freq_hz": int(gpu_freq) if gpu_freq and gpu_freq.isdigit() else gpu_freq,
        "emc_freq_hz": read_text("/sys/kernel/debug/bpmp/debug/clk/emc/rate"),
    }


def board_model() -> Optional[str]:
    """The device-tree board model (e.g. 'Raspberry Pi 4 Model B Rev 1.4'), when there is one."""
    return read_text("/proc/device-tree/model")


# Instruction-set extensions that decide INT8 and bf16/fp16 speed on CPU: VNNI/AMX give ONNX
# Runtime's U8S8 kernels (and torch's bf16) their speed-up; without them an INT8 model can be
# slower than FP32. x86 names from /proc/cpuinfo `flags`, Arm names from `Features`.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
             "neon", "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2")


def cpu_flags() -> list[str]:
    """The CPU_FLAGS this CPU reports, in CPU_FLAGS order ([] where /proc/cpuinfo is absent, e.g. macOS)."""
    text = read_text("/proc/cpuinfo", 1 << 20) or ""
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
    return [f for f in CPU_FLAGS if f in found]


def isa_summary(flags: list[str]) -> str:
    """The one extension that matters most for INT8/bf16 speed, e.g. 'AVX-512 VNNI', 'AMX', 'NEON dotprod'."""
    f = set(flags)
    for names, label in ((("amx_int8",), "AMX"), (("avx512_vnni",), "AVX-512 VNNI"), (("avx_vnni",), "AVX-VNNI"),
                         (("avx512f",), "AVX-512"), (("avx2",), "AVX2"), (("i8mm",), "NEON i8mm"),
                         (("asimddp",), "NEON dotprod"), (("asimd", "neon"), "NEON")):
        if f & set(names):
            return label
    return ""


def load_average() -> Optional[list[float]]:
    """1, 5 and 15 minute load averages (None where the OS has none): a busy machine explains slow figures."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def collect_fingerprint(threads: Any = None) -> dict[str, Any]:
    """Everything about this machine and process that changes benchmark numbers."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    torch = sys.modules.get("torch")
    governor = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    fp: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_governor": governor,
        "cpu_flags": cpu_flags(),
        "load_avg": load_average(),
        "threads": {
            "requested": threads,
            "torch_intra_op": torch.get_num_threads() if torch is not None else None,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "packages": package_versions(),
        **cuda_info(),
        "board_model": board_model(),
        "jetson": jetson_info(),
    }
    if fp["board_model"] and "raspberry" in fp["board_model"].lower():
        fp["raspberry_pi"] = True
    return fp


def describe_fingerprint(fp: dict[str, Any]) -> str:
    """One line for the table caption."""
    cpu = [f"{fp.get('cpu_affinity') or fp.get('cpu_count')} cores", isa_summary(fp.get("cpu_flags") or [])]
    if fp.get("load_avg"):
        cpu.append(f"load {fp['load_avg'][0]:.2f}")
    parts = [f"{fp.get('cpu_model')} ({', '.join(c for c in cpu if c)})"]
    if fp.get("gpu"):
        parts.append(f"GPU {fp['gpu']} (CUDA {fp.get('cuda')})")
    if fp.get("board_model"):
        parts.append(fp["board_model"])
    if fp.get("jetson"):
        parts.append(f"{fp['jetson']['l4t_release']}")
    pk = fp.get("packages", {})
    shown = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "openvino")
    parts.append(", ".join(f"{k} {v}" for k, v in pk.items() if v and k in shown))
    return " | ".join(p for p in parts if p)


__all__ = ["collect_fingerprint", "describe_fingerprint", "cpu_flags", "isa_summary", "load_average", "board_model",
           "jetson_info", "cuda_info"]
