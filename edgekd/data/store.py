"""An on-disk uint8 image store: an image folder decoded once, read by rows with bounded memory.

Layout of a store directory (every array is a `.npy` file, so `np.load(path, mmap_mode="r")`
memory-maps it; edgekd itself reads rows with positional reads, which keep the resident set at
the batches in flight even when the store is many times larger than RAM):

    meta.json              written last: a store without it is incomplete (format, side, mode, classes, counts, key)
    {split}.npy            (N, side, side, C) uint8: image i of the listing, `fit_square`d (edgekd.runtime.resize)
    {split}.labels.npy     (N,) int64 class of every listed file
    {split}.ok.npy         (N,) uint8: 1 where the file decoded (unreadable files leave a zero row, ok 0)
    {split}.sums.npy       (N, 2, C) float64 per-image channel sums and sums of squares (normalisation stats)
    {split}.files.txt      the listed source files (relative to the folder), one per line: the split's index
    {split}.skipped.txt    `index<TAB>file<TAB>reason` of unreadable files
    progress.json          while decoding: the listing key and how many files of which split are done

Decoding (`build_store`) runs Pillow in a thread pool (it releases the GIL), writes rows with
positional writes in chunks, and records progress after every chunk is on disk: an interrupted
decode resumes at the last finished chunk. A `.lock` file (flock) lets one process decode while
the others (DDP ranks on one machine) wait and then open the finished store. Unreadable images
follow the image-folder reader's policy (edgekd.data.readers.ImagePolicy): skipped and listed, or
refused. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from edgekd.data.images import ImageRows, image_sums
from edgekd.errors import DataError, first_line
from edgekd.runtime.resize import fit_array

STORE_FORMAT = "edgekd-store"
STORE_VERSION = 1
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
SPLITS = ("train", "test")
CHUNK = 256  # images decoded between two progress records

Progress = Callable[[str, int, int], None]  # (split, done, total)


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a C-order .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise DataError(f"{path}: Fortran-ordered arrays are not a store layout")
        return tuple(shape), dtype, f.tell()


def _create(path: Path, shape: tuple[int, ...], dtype) -> None:
    """A .npy file of `shape` with unwritten (sparse, zero) data."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})
        f.truncate(f.tell() + int(np.prod(shape)) * dtype.itemsize)


class RowFile:
    """Rows of a C-order .npy file read and written with positional I/O (thread-safe, fork-safe)."""

    def __init__(self, path: Path, writable: bool = False):
        self.path = Path(path)
        self.shape, self.dtype, self.offset = _header(self.path)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.writable = writable
        self._fd: Optional[int] = None
        self._pid = -1

    def fd(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own descriptor
            self._fd = os.open(self.path, os.O_RDWR if self.writable else os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (sorted unique positions read fastest: consecutive rows are one read)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"{self.path.name}: row out of range for {self.shape[0]} rows")
        buf = memoryview(out.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        fd, rb = self.fd(), self.row_bytes
        for run in np.split(np.arange(len(rows)), breaks):
            first, count = int(run[0]), len(run)
            view, pos = buf[first * rb:(first + count) * rb], self.offset + int(rows[first]) * rb
            while len(view):
                got = os.preadv(fd, [view], pos)
                if got <= 0:
                    raise DataError(f"{self.path}: file is shorter than its header says (truncated store?)")
                view, pos = view[got:], pos + got
        return out

    def write(self, start: int, values: np.ndarray) -> None:
        """Write consecutive rows from `start`."""
        data = memoryview(np.ascontiguousarray(values, dtype=self.dtype).reshape(-1).view(np.uint8))
        pos = self.offset + start * self.row_bytes
        while len(data):
            n = os.pwrite(self.fd(), data, pos)
            data, pos = data[n:], pos + n

    def sync(self) -> None:
        os.fsync(self.fd())


@dataclass(frozen=True, eq=False)
class StoreSplit:
    """One split of an opened store: its images (`RowFile`), labels, sums and index, valid rows only."""

    name: str
    images: RowFile
    rows: np.ndarray  # positions of the decoded files in images (ok == 1)
    labels: np.ndarray  # (len(rows),) int64
    sums: np.ndarray  # (len(rows), 2, C) float64
    files: tuple[str, ...]  # every listed file, in row order (including unreadable ones)

    def __len__(self) -> int:
        return len(self.rows)

    def image_rows(self, **kw) -> ImageRows:
        """The valid images as `ImageRows` (positional reads; nothing is loaded)."""
        return ImageRows(self.images, self.rows, **kw)

    def memmap(self) -> np.ndarray:
        """Every row (including unreadable zero rows) as a read-only memory map."""
        return np.load(self.images.path, mmap_mode="r")

    def load(self) -> np.ndarray:
        """The valid images read into memory: (len(rows), side, side, C) uint8."""
        return self.images.read(self.rows)


@dataclass(frozen=True, eq=False)
class Store:
    """An opened, complete store (see the module docstring)."""

    root: Path
    meta: dict

    @property
    def side(self) -> int:
        return int(self.meta["side"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])

    @property
    def hflip(self) -> bool:
        return bool(self.meta.get("hflip", True))

    def split(self, name: str) -> StoreSplit:
        if name not in self.meta["splits"]:
            raise DataError(f"store {self.root} has no {name!r} split")
        base = self.root / name
        ok = np.load(f"{base}.ok.npy")
        rows = np.flatnonzero(ok).astype(np.int64)
        files = tuple(Path(f"{base}.files.txt").read_text().splitlines())
        return StoreSplit(name, RowFile(Path(f"{base}.npy")), rows, np.load(f"{base}.labels.npy")[rows],
                          np.load(f"{base}.sums.npy")[rows], files)


def open_store(path: str | os.PathLike) -> Store:
    """Open a complete store directory (DataError when it is missing, incomplete or of another format)."""
    root = Path(path)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        why = "an interrupted decode (run again to resume)" if (root / PROGRESS_FILE).is_file() else "not a store"
        raise DataError(f"store {root}: no {META_FILE}: {why}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"store {root}: cannot read {META_FILE} ({first_line(exc)})") from None
    if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
        raise DataError(f"store {root}: format {meta.get('format')!r} v{meta.get('version')} is not "
                        f"{STORE_FORMAT} v{STORE_VERSION}; decode the folder again")
    return Store(root, meta)


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """An exclusive flock on `root/.lock` (held by the decoding process; others wait here)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - no flock (Windows): one decoding process is assumed
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def decode_progress(counts: dict[str, int], log: Callable[[str], None] = print) -> tuple[Progress, Callable[[], None]]:
    """A `Progress` callback over every split's files (edgekd.progress: a bar on a terminal, else a
    line every 30 s) and the function that closes it."""
    from edgekd.progress import RunProgress

    bar = RunProgress(sum(counts.values()), log=log)
    offset = {"train": 0, "test": counts.get("train", 0)}

    def update(split: str, done: int, total: int) -> None:
        bar.desc = f"decoding {split}"
        bar.update(offset[split] + done, f"{done}/{total} {split} images")

    return update, bar.close


def _decode_one(path: Path, mode: str, side: int) -> tuple[Optional[np.ndarray], str]:
    """(fit_square'd image, "") or (None, reason) for one file, with the runtime's decoder."""
    from edgekd.runtime.preprocess import ImageError, read_image

    try:
        return fit_array(read_image(path, mode), side), ""
    except ImageError as exc:
        return None, str(exc).removeprefix(f"{path}: ")


def _decode_split(root: Path, split: str, files: Sequence[Path], src: Path, mode: str, side: int,
                  start: int, threads: int, progress: Optional[Progress], strict: bool) -> None:
    """Decode files[start:] into the split's files, recording progress after every chunk."""
    from edgekd.io import write_json_atomic

    channels = 1 if mode == "L" else 3
    images, sums, ok = (RowFile(Path(f"{root / split}{suffix}"), writable=True)
                        for suffix in (".npy", ".sums.npy", ".ok.npy"))
    key = json.loads((root / PROGRESS_FILE).read_text())["key"]
    with ThreadPoolExecutor(max(1, threads)) as pool, open(f"{root / split}.skipped.txt", "a") as skipped:
        for lo in range(start, len(files), CHUNK):
            chunk = files[lo:lo + CHUNK]
            out = list(pool.map(lambda f: _decode_one(f, mode, side), chunk))
            block = np.zeros((len(chunk), side, side, channels), dtype=np.uint8)
            good = np.zeros(len(chunk), dtype=np.uint8)
            for i, (arr, reason) in enumerate(out):
                if arr is None:
                    if strict:
                        raise DataError(f"imagefolder: cannot decode {chunk[i]}: {reason} (--strict-images)")
                    skipped.write(f"{lo + i}\t{chunk[i].relative_to(src)}\t{reason}\n")
                else:
                    block[i], good[i] = arr, 1
            images.write(lo, block)
            sums.write(lo, image_sums(block))
            ok.write(lo, good)
            skipped.flush()
            for f in (images, sums, ok):
                f.sync()
            done = min(lo + CHUNK, len(files))
            write_json_atomic(root / PROGRESS_FILE, {"key": key, "split": split, "done": done})
            if progress is not None:
                progress(split, done, len(files))
    for f in (images, sums, ok):
        f.close()


def _resume_point(root: Path, key: str, split: str) -> Optional[int]:
    """Files of `split` already decoded under `key` (None: start this split afresh)."""
    try:
        state = json.loads((root / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("key") != key:
        return None
    order = list(SPLITS)
    if order.index(state["split"]) > order.index(split):
        return 1 << 62  # this split is finished
    return int(state["done"]) if state["split"] == split else None


def _start_split(root: Path, split: str, files: Sequence[Path], labels: Sequence[int], src: Path,
                 side: int, channels: int) -> None:
    """Fresh, empty files for a split (any partial decode of it is discarded)."""
    base = root / split
    _create(Path(f"{base}.npy"), (len(files), side, side, channels), np.uint8)
    _create(Path(f"{base}.sums.npy"), (len(files), 2, channels), np.float64)
    _create(Path(f"{base}.ok.npy"), (len(files),), np.uint8)
    np.save(f"{base}.labels.npy", np.asarray(labels, dtype=np.int64))
    Path(f"{base}.files.txt").write_text("".join(f"{f.relative_to(src)}\n" for f in files))
    Path(f"{base}.skipped.txt").write_text("")


def _trim_skipped(root: Path, split: str, done: int) -> None:
    """Drop skipped-file lines of a chunk that was being decoded when the run stopped."""
    path = Path(f"{root / split}.skipped.txt")
    lines = [ln for ln in path.read_text().splitlines(keepends=True) if int(ln.split("\t", 1)[0]) < done]
    path.write_text("".join(lines))


def build_store(src: str | os.PathLike, out: str | os.PathLike, side: int, *, policy=None,
                threads: Optional[int] = None, progress: Optional[Progress] = None,
                size: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> Store:
    """Decode image folder `src` (`train/<class>/*`, `test/<class>/*`) into a store at `out`.

    Resumes an interrupted decode of the same listing; returns the opened store at once when it is
    complete. `size` (the training size the side was chosen for) is recorded for `store:PATH` specs.
    Progress goes to `progress(split, done, total)`, or with `log` to a bar / periodic lines.

    Raises:
        DataError: unreadable folder, or unreadable images beyond `policy` (edgekd.data.readers.ImagePolicy).
    """
    from edgekd.data.readers import ImagePolicy, _cache_key, _list_split
    from edgekd.io import write_json_atomic
    from edgekd.runtime.preprocess import image_channels

    policy = policy or ImagePolicy()
    src, root = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"imagefolder dataset not found: {src}")
    tr_files, tr_labels, names = _list_split(src, "train", None)
    te_files, te_labels, _ = _list_split(src, "test", names)
    listing = {"train": (tr_files, tr_labels), "test": (te_files, te_labels)}
    key = f"{_cache_key(tr_files + te_files)}-{side}"
    with store_lock(root):
        if (root / META_FILE).is_file():
            store = open_store(root)
            if store.meta.get("key") == key:
                return store
            (root / META_FILE).unlink()  # the folder changed: decode again
        mode = _probe_mode(tr_files, image_channels)
        channels = 1 if mode == "L" else 3
        close = None
        if progress is None and log is not None:
            log(f"decoding {len(tr_files)} train and {len(te_files)} test images of {src} into {side}-px squares "
                f"at {root} (once; an interrupted decode resumes)")
            progress, close = decode_progress({s: len(listing[s][0]) for s in SPLITS}, log)
        try:
            _decode_all(root, src, listing, key, mode, side, threads, progress, policy)
        finally:
            if close is not None:
                close()
        meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "key": key, "source": str(src.resolve()),
                "side": side, "size": size, "mode": mode, "channels": channels, "hflip": mode == "RGB",
                "class_names": list(names), "splits": {s: len(listing[s][0]) for s in SPLITS}}
        write_json_atomic(root / META_FILE, meta)
        (root / PROGRESS_FILE).unlink(missing_ok=True)
    return open_store(root)


def _decode_all(root: Path, src: Path, listing: dict, key: str, mode: str, side: int, threads: Optional[int],
                progress: Optional[Progress], policy) -> None:
    """Decode (or resume decoding) every split, then apply the unreadable-image policy to each."""
    from edgekd.data.readers import check_skipped
    from edgekd.io import write_json_atomic

    channels = 1 if mode == "L" else 3
    for split in SPLITS:
        files, labels = listing[split]
        done = _resume_point(root, key, split)
        if done is None:
            _start_split(root, split, files, labels, src, side, channels)
            write_json_atomic(root / PROGRESS_FILE, {"key": key, "split": split, "done": 0})
            done = 0
        elif done < len(files):
            _trim_skipped(root, split, done)
        if done < len(files):
            _decode_split(root, split, files, src, mode, side, done, threads or min(8, os.cpu_count() or 1),
                          progress, policy.strict)
        bad = [tuple(ln.split("\t", 2)[1:]) for ln in Path(f"{root / split}.skipped.txt").read_text().splitlines()]
        check_skipped([(str(src / f), r) for f, r in bad], len(files), split, policy)


def _probe_mode(files: Sequence[Path], image_channels) -> str:
    """`L` or `RGB`: the mode of the first train image that opens (as the in-memory reader decides)."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                return "L" if image_channels(im.mode) == 1 else "RGB"
        except Exception:  # noqa: BLE001 - unreadable files are counted by the decode
            continue
    raise DataError(f"imagefolder: cannot open any train image of {len(files)}")


def write_store(out: str | os.PathLike, splits: dict, class_names: Sequence[str], side: int, *,
                size: Optional[int] = None, hflip: bool = True, source: str = "arrays", chunk: int = CHUNK) -> Store:
    """A store from in-memory arrays: splits = {"train": (x, y), "test": (x, y)}, x uint8 (N, H, W, C).

    Images are `fit_square`d to `side` chunk by chunk (benchmarks build multi-GB stores from synthetic data).
    """
    from edgekd.io import write_json_atomic

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / META_FILE).unlink(missing_ok=True)
    channels = int(splits["train"][0].shape[-1])
    for split in SPLITS:
        x, y = splits[split]
        base = root / split
        _create(Path(f"{base}.npy"), (len(x), side, side, channels), np.uint8)
        _create(Path(f"{base}.sums.npy"), (len(x), 2, channels), np.float64)
        np.save(f"{base}.labels.npy", np.asarray(y, dtype=np.int64))
        np.save(f"{base}.ok.npy", np.ones(len(x), dtype=np.uint8))
        Path(f"{base}.files.txt").write_text("".join(f"{source}[{i}]\n" for i in range(len(x))))
        Path(f"{base}.skipped.txt").write_text("")
        images, sums = RowFile(Path(f"{base}.npy"), True), RowFile(Path(f"{base}.sums.npy"), True)
        for lo in range(0, len(x), chunk):
            block = np.stack([fit_array(im, side) for im in x[lo:lo + chunk]])
            images.write(lo, block)
            sums.write(lo, image_sums(block))
        images.close()
        sums.close()
    meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "key": f"{source}-{side}", "source": source,
            "side": side, "size": size, "mode": "L" if channels == 1 else "RGB", "channels": channels,
            "hflip": hflip, "class_names": [str(c) for c in class_names],
            "splits": {s: len(splits[s][1]) for s in SPLITS}}
    write_json_atomic(root / META_FILE, meta)
    return open_store(root)


def imagefolder_store(path: str | os.PathLike, side: int, *, policy=None, size: Optional[int] = None,
                      progress: Optional[Progress] = None) -> Store:
    """The store of image folder `path` at `side` under `$EDGEKD_CACHE/stores/` (decoded on first use)."""
    from edgekd.data.readers import _cache_dir

    src = Path(path).resolve()
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in src.name)[:40]
    tag = hashlib.sha256(str(src).encode()).hexdigest()[:12]  # one store per folder and side; its key tracks changes
    return build_store(src, _cache_dir() / "stores" / f"{name}-{tag}-{side}", side, policy=policy, size=size,
                       progress=progress, log=print)


__all__ = ["RowFile", "decode_progress", "Store", "StoreSplit", "build_store", "imagefolder_store", "open_store",
           "write_store"]
