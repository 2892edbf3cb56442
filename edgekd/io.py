"""Atomic file writes and hashing, shared by checkpoints, exports and reports.

An output is either the old file or the complete new one, never a prefix of it, even after a power
cut (a Pi or a Jetson on a battery): the data goes to a hidden temp file beside the target, which is
fsynced, renamed over the target, and the directory is fsynced so the rename itself survives.

Any OSError while writing (disk full, quota, read-only file system, the target is a directory)
becomes a one-line `WriteError`, the temp file is removed and the old target is untouched.

Temp files carry their writer's pid and host (`.NAME.<pid>@<host>.<hex>.tmp`, and export staging
folders `.OUT.staging-<pid>@<host>-<hex>`), so a later run removes those of dead processes
(`remove_stale`): a kill -9 in the middle of a checkpoint or an export leaves nothing behind for long.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from edgekd.errors import EdgekdError, first_line

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9]*)\.[0-9a-f]+\.tmp$")
# staging folders of edgekd.export.pipeline; the host part is absent in names written before this rule
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.staging-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9]*))?-[0-9a-f]+$")


class WriteError(EdgekdError, OSError):
    """An output could not be written (disk full, no permission, ...). Also an OSError, for callers
    that treat a failed write as optional (the decode cache)."""


def host_tag() -> str:
    """This machine's name reduced to [A-Za-z0-9] (at most 24 characters), for names and lock files."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]


def owner_tag() -> str:
    """`<pid>@<host>`: who owns a temp file or staging folder, so a later run can tell a dead owner."""
    return f"{os.getpid()}@{host_tag()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process; anything else: unknown, so keep its files
        return True
    return True


def _owner_dead(pid: str, host: Optional[str]) -> bool:
    # another machine's process cannot be probed from here (a shared file system): treat it as alive
    return (host is None or host == host_tag()) and not pid_alive(int(pid))


def remove_stale(directory: str | os.PathLike, name: Optional[str] = None) -> list[Path]:
    """Delete temp files and staging folders in `directory` whose owner process is dead; returns them.

    Args:
        directory: the folder to clean (a run directory, the parent of an export's --out).
        name: only leftovers of this target name (`last.pt` matches `.last.pt.<pid>@<host>.<hex>.tmp`).

    Files of live processes, of other hosts, and of anything not named by this module are left alone.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    removed = []
    for e in entries:
        m = _TMP_RE.match(e.name) or _STAGING_RE.match(e.name)
        if m is None or (name is not None and m["name"] != name) or not _owner_dead(m["pid"], m["host"]):
            continue
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass  # another cleaner got there first, or no permission: not ours to insist on
    return removed


def write_error(path: str | os.PathLike, exc: BaseException) -> WriteError:
    """A one-line WriteError for a failed write of `path` (keeps errno, so `except OSError` still works)."""
    if isinstance(exc, WriteError):
        return exc
    reason = getattr(exc, "strerror", None) or first_line(exc)
    if getattr(exc, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason += " (disk full: free space and run again; nothing was half-written)"
    err = WriteError(f"cannot write {path}: {reason}")
    err.errno = getattr(exc, "errno", None)
    return err


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so a rename in it survives a power cut (no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # on Linux an fsync through any descriptor flushes the file's data
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`, else delete it.

    Raises:
        WriteError: any OSError of the body, the fsync or the rename (one line; the old `path` is intact).
    """
    path = Path(path)
    tmp: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent, name=path.name)  # leftovers of this very file by a killed writer
        tmp = path.parent / f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}.tmp"
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0666 & ~umask, like open()
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            try:
                tmp.unlink()
            except OSError:
                pass


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """An open file whose contents replace `path` atomically when the block ends without error."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()


def write_bytes_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` atomically.

    For serialisers that report a full disk badly: `torch.save` raises an opaque RuntimeError
    ("unexpected pos ...") when the disk fills, to a path or to a file object alike. Serialised to
    memory first (`buf = io.BytesIO(); torch.save(obj, buf); write_bytes_atomic(path, buf.getbuffer())`),
    the write is plain Python I/O and a full disk is OSError(ENOSPC), i.e. a one-line WriteError.
    """
    with atomic_file(path) as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
