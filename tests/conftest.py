"""Test configuration: skips decided from markers in one hook, with the reason shown by `-ra`.

Markers (registered in pyproject.toml): `gpu` needs CUDA, `tensorrt` needs TensorRT and CUDA,
`data` needs the real datasets in `../shared/data`, `slow` runs by default.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@functools.lru_cache(maxsize=None)
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _tensorrt_missing_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT: `import tensorrt` fails (pip extra edgekd[tensorrt] on a CUDA machine)"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install is as good as none
        return f"needs TensorRT: `import tensorrt` fails ({type(exc).__name__}: {exc})"
    if not _cuda_available():
        return "needs TensorRT with a CUDA GPU: torch.cuda.is_available() is False"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip marked tests whose requirement is absent; the reason names what is missing."""
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        reason = None
        if "tensorrt" in marks:
            reason = _tensorrt_missing_reason()
        if reason is None and "gpu" in marks and not _cuda_available():
            reason = "needs a CUDA GPU: torch.cuda.is_available() is False"
        if reason is None and "data" in marks and not SHARED_DATA.is_dir():
            reason = f"needs the real datasets: {SHARED_DATA} is absent"
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """The development machines have 2 shared cores: small tests run fastest on one or two threads."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def edgekd_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-test decode cache (`EDGEKD_CACHE`) so tests never write to ~/.cache."""
    path = tmp_path_factory.mktemp("edgekd-cache")
    monkeypatch.setenv("EDGEKD_CACHE", str(path))
    return path
