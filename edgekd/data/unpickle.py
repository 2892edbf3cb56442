"""A restricted unpickler for data files that are pickles by format (the CIFAR python batches).

`pickle.load` calls whatever callable a file names, so a crafted `data_batch_1` runs code before any
check. `load_restricted` admits only what such a file needs: the builtin containers and scalars
(opcodes, no lookup), a few harmless builtins, and numpy arrays, dtypes and scalars (numpy pickles
them through `_reconstruct`/`scalar` in `numpy.core.multiarray`, `numpy._core.multiarray` since
numpy 2, and `numeric._frombuffer` under pickle protocol 5; all three only build arrays). Any
other global is refused with one line before anything is called. Everything else in edgekd that
reads a file avoids pickle altogether: checkpoints `torch.load(weights_only=True)`,
npz files and the decode cache `np.load(allow_pickle=False)` (docs/architecture.md, "Bad input").
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO, Iterable, Optional

import numpy as np

from edgekd.errors import DataError, first_line

# numpy's own reduce functions, taken from live objects so the numpy 1 and 2 module names both resolve
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 pickles an array's bytes as a buffer
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _RECONSTRUCT for m in _NUMPY_MODULES},
    **{(m, "scalar"): _SCALAR for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _FROMBUFFER for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols 0-2 (a pure function)
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
}


class UnsafePickleError(DataError):
    """A pickled data file names something other than containers, scalars and numpy arrays."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle's hook
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refuses to load {module}.{name} (only containers, scalars and "
                                    f"numpy arrays are allowed in a data file)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refuses a persistent id (only containers, scalars and numpy arrays are allowed)")


def load_restricted(fh: BinaryIO | bytes, what: str, keys: Optional[Iterable[str]] = None,
                    encoding: str = "bytes") -> Any:
    """Unpickle `fh` admitting only ALLOWED_GLOBALS; with `keys`, the result must be a dict with only those keys.

    Args:
        fh: an open binary file or the pickle bytes.
        what: the file, for messages (`cifar: PATH ...`).
        keys: the allowed dict keys (str; their bytes twins from Python 2 pickles are allowed too).
        encoding: how Python 2 `str` objects are decoded ("bytes" keeps them bytes, as CIFAR needs).

    Raises:
        UnsafePickleError: a global or persistent id outside the allowed set (nothing was called).
        DataError: not a pickle, truncated, or a dict with other keys (one line).
    """
    stream = io.BytesIO(fh) if isinstance(fh, (bytes, bytearray)) else fh
    try:
        obj = _Restricted(stream, encoding=encoding).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pickle raises anything from EOFError to TypeError on bad bytes
        raise DataError(f"{what}: cannot read ({first_line(exc)})") from None
    if keys is not None:
        allowed = set(keys) | {k.encode() for k in keys}
        if not isinstance(obj, dict):
            raise DataError(f"{what}: expected a dict, found {type(obj).__name__}")
        extra = [k for k in obj if k not in allowed]
        if extra:
            raise DataError(f"{what}: unexpected key {extra[0]!r} (allowed: {', '.join(sorted(keys))})")
    return obj
