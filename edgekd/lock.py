"""Run-directory lock: one run at a time writes into a directory.

Two trainings started into the same `--out` would mix their files (the config of one, the
checkpoints of the other) or crash loading each other's `best.pt`. `run_lock(dir)` holds
`dir/.edgekd.lock` for the duration of a run; a second run is refused with one line naming the
holder (pid, host, start time, command).

Why a kernel lock (`flock`) on the file and not only an O_EXCL-created pid file: the kernel drops
the lock when its process dies, however it dies (kill -9, OOM killer), so a stale lock of a killed
run is free by construction and taking it over has no race (two newcomers cannot both win, and
nobody can delete a live holder's file and slip in). The JSON in the file only names the holder.
Belt and braces for file systems that ignore `flock` (some FUSE mounts) or lack it (ENOLCK on NFS
mounted `nolock`): a recorded holder on this host whose pid is alive is always respected; without
`flock` a holder on another host is respected too (its pid cannot be probed from here).

Release unlinks the file while still holding the lock; a newcomer that opened the old file checks
after locking that the path still names its inode, and retries otherwise.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from edgekd.errors import EdgekdError, first_line
from edgekd.io import host_tag, pid_alive

LOCK_FILE = ".edgekd.lock"
_ATTEMPTS = 5  # inode changed under us (a holder released in between): retry this often


class RunLockedError(EdgekdError):
    """The run directory is in use by another (live) run."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a run directory: written into the lock file as JSON."""

    pid: int
    host: str
    started: str  # ISO 8601 with the UTC offset
    command: str = ""

    def describe(self) -> str:
        cmd = f" ({self.command})" if self.command else ""
        return f"pid {self.pid} on {self.host}, started {self.started}{cmd}"

    def same_host(self) -> bool:
        return host_tag() == "".join(c for c in self.host if c.isalnum())[:24]


def _me() -> LockHolder:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return LockHolder(os.getpid(), socket.gethostname(), started, " ".join(sys.argv)[:160])


def _parse(text: str) -> Optional[LockHolder]:
    try:
        d = json.loads(text)
        return LockHolder(int(d["pid"]), str(d["host"]), str(d["started"]), str(d.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None  # empty (a holder between create and write) or not ours


def _read_fd(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace")


def _flock(fd: int) -> Optional[bool]:
    """Try the exclusive kernel lock: True got it, False held by another, None not supported here."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            return None
        raise


def _refuse(directory: Path, holder: Optional[LockHolder], path: Path, hint: str = "") -> RunLockedError:
    who = holder.describe() if holder else "a run that is still starting"
    return RunLockedError(f"{directory} is in use by another run: {who}; wait for it to finish or use another "
                          f"--out{hint}")


def _acquire(directory: Path, path: Path, me: LockHolder) -> tuple[int, Optional[LockHolder]]:
    """Take the lock: (open descriptor, stale holder taken over or None). Raises RunLockedError."""
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            got = _flock(fd)
            if got is False:
                raise _refuse(directory, _parse(_read_fd(fd)), path)
            st, cur = os.fstat(fd), _stat(path)
            if cur is None or (cur.st_ino, cur.st_dev) != (st.st_ino, st.st_dev):
                os.close(fd)  # released and unlinked by its holder after we opened it: try the new file
                continue
            previous = _parse(_read_fd(fd))
            if previous is not None and previous.pid != os.getpid():
                alive_here = previous.same_host() and pid_alive(previous.pid)
                if alive_here or (got is None and not previous.same_host()):
                    hint = f" (if that run is gone, delete {path})"
                    raise _refuse(directory, previous, path, hint)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me.__dict__) + "\n").encode(), 0)
            os.fsync(fd)
            return fd, previous
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
    raise _refuse(directory, None, path)


def _stat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


@contextmanager
def run_lock(directory: str | os.PathLike, log=None) -> Iterator[LockHolder]:
    """Hold `directory`'s run lock for the block; yields this process's LockHolder record.

    Args:
        directory: the run directory (created if absent, and removed again at release if it is then
            empty: a run refused after taking the lock leaves no directory behind).
        log: called with one line when a stale lock of a dead run is taken over (None: silent).

    Raises:
        RunLockedError: another live run holds the directory (one line naming it).
        EdgekdError: the directory cannot be created or written.
    """
    d = Path(directory)
    path = d / LOCK_FILE
    me = _me()
    created = not d.exists()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, stale = _acquire(d, path, me)
    except OSError as exc:
        reason = "it is not a directory" if d.exists() and not d.is_dir() else exc.strerror or first_line(exc)
        raise EdgekdError(f"cannot write to run directory {d}: {reason}") from None
    if stale is not None and log is not None:
        log(f"note: took over the lock of a run that is gone ({stale.describe()})")
    try:
        yield me
    finally:
        try:
            st, cur = os.fstat(fd), _stat(path)
            if cur is not None and (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(path)  # before closing: nobody can lock the old inode and believe it current
        except OSError:
            pass
        os.close(fd)
        if created:
            try:
                d.rmdir()  # only succeeds when empty
            except OSError:
                pass


def lock_holder(directory: str | os.PathLike) -> Optional[LockHolder]:
    """The recorded holder of a run directory's lock, or None (no lock file, or unreadable)."""
    try:
        return _parse((Path(directory) / LOCK_FILE).read_text())
    except OSError:
        return None
