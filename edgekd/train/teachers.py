"""The one teacher loader of `--teacher` (every distilling method): load, check against the data, cache.

A teacher is any of (picked by file content/suffix):
- an edgekd checkpoint (`.pt` run output; its own mean/std are used),
- a TorchScript file (`torch.jit.save`; fed images normalised with the data's mean/std),
- an ONNX model run with ONNX Runtime: mean/std, class names and input shape from its edgekd
  manifest (embedded in the model's metadata by `edgekd export`, or `manifest.json` beside it,
  read by `edgekd.runtime.manifest`), else the data's mean/std,
- a precomputed logits file, `.npy` or `.npz` (key `logits` or its only array), one row per
  training sample: either per image of the reader's train split (indexed by `ImageData.train_ids`)
  or per image of `ImageData.x_train`,
- a zero-shot teacher `zeroshot:ENCODER.onnx,TEXT.npz`: an image encoder and class text embeddings
  (CLIP used zero-shot, as in DHO's paper; `edgekd.train.zeroshot`), for any input size.

Every model teacher takes images in [0, 1] and normalises them itself, so a teacher trained with
other statistics than the student still sees what it was trained on (`unnormalize` turns the
student's normalised batch back into [0, 1]). A teacher whose class count, class names or input
shape do not match the data is refused with one line.

The teacher-output cache (`teacher_logits`) stores fp16 logits under `$EDGEKD_CACHE/teacher-logits`
(default `~/.cache/edgekd`), keyed by the sha256 of the teacher file (both files of a zero-shot
teacher), the data spec, a hash of the split's images and ids, the teacher's normalisation and the
view, so a different teacher, dataset or split never reuses a stale entry. `view_logits` caches the
teacher on fixed augmented views (`edgekd.data.views.ViewPlan`), one `.npy` per round, read
memory-mapped; its key adds the round's augmentation (seed, round, geometry).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from edgekd.errors import EdgekdError, first_line
from edgekd.io import atomic_path, sha256_file
from edgekd.names import PROBS_NAME
from edgekd.train.zeroshot import PREFIX as ZEROSHOT_PREFIX

CACHE_VERSION = 1
VIEWS = ("eval",)  # the cached view: un-augmented images (augmented views need the online teacher)
TEACHER_KINDS = ("checkpoint", "torchscript", "onnx", "logits", "zeroshot")


@dataclass
class Teacher:
    """A loaded teacher. `run(x01)` maps (N, C, H, W) float images in [0, 1] to (N, K) logits."""

    kind: str  # one of TEACHER_KINDS
    path: Path
    sha256: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # None for a logits file
    table: Optional[np.ndarray] = None  # (rows, K) for a logits file
    extra: dict = field(default_factory=dict)

    @property
    def runnable(self) -> bool:
        return self.run is not None

    @property
    def output_kind(self) -> str:
        """What the model outputs: `probs` (a DHO export; `run` gives their logs), `logits`, or `unknown`
        (TorchScript and logits files do not say)."""
        return self.extra.get("output_kind", "unknown")

    @property
    def label(self) -> str:
        """The file name (both names for a zero-shot teacher), for messages."""
        return self.extra.get("name", self.path.name)

    def describe(self) -> str:
        """`name (kind)`, for log lines."""
        return f"{self.label} ({self.kind})"


def _normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return lambda x: (x - m.to(x.device)) / s.to(x.device)


def unnormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo `(x01 - mean) / std`: a normalised (N, C, H, W) batch back to [0, 1] images (float32)."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.float() * s + m


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a `code/` folder; `torch.save` archives do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _as_logits(out: torch.Tensor, kind: str) -> torch.Tensor:
    # a teacher that emits probabilities (a DHO model) becomes log-probabilities: softmax(log p) = p
    return torch.log(out.float().clamp_min(1e-12)) if kind == "probs" else out.float()


def _load_checkpoint_teacher(path: Path, sha: str, device: torch.device, channels_last: bool) -> Teacher:
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    ckpt = load_checkpoint(path)
    model = rebuild_training_model(ckpt, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:  # the student's batches are channels_last: the teacher's convolutions then match
        model = model.to(memory_format=torch.channels_last)
    norm, kind = _normalizer(ckpt["mean"], ckpt["std"]), ckpt.get("output_kind", "logits")

    def run(x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _as_logits(model(norm(x01.to(device).float())), kind)

    return Teacher("checkpoint", path, sha, len(ckpt["class_names"]), tuple(ckpt["mean"]), tuple(ckpt["std"]), run,
                   extra={"input_shape": tuple(ckpt["input_shape"]), "class_names": tuple(ckpt["class_names"]),
                          "module": model, "output_kind": kind})


def _load_torchscript_teacher(path: Path, sha: str, data, device: torch.device) -> Teacher:
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # noqa: BLE001 - any load failure is a bad teacher file
        raise EdgekdError(f"teacher {path.name}: cannot load TorchScript ({first_line(exc, 120)})") from None
    norm = _normalizer(data.mean, data.std)

    def run(x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(norm(x01.to(device).float())).float()

    return Teacher("torchscript", path, sha, -1, tuple(data.mean), tuple(data.std), run, extra={"module": module})


def _load_onnx_teacher(path: Path, sha: str, data, device: torch.device) -> Teacher:
    """An ONNX teacher through the one session factory; its manifest (if any) gives its own mean/std."""
    from edgekd.runtime.manifest import locate_manifest
    from edgekd.runtime.session import ModelError, available_providers, model_metadata, open_session

    cuda = device.type == "cuda" and "CUDAExecutionProvider" in available_providers()
    try:
        # no spinning: ORT's idle threads would starve torch's, which alternate with them every step
        sess = open_session(path, threads=max(1, torch.get_num_threads()), spinning=False,
                            providers=["cuda", "cpu"] if cuda else ["cpu"])
    except ModelError as exc:
        raise EdgekdError(f"teacher {path.name}: {first_line(exc)}") from None
    inp, outs = sess.get_inputs()[0], sess.get_outputs()
    manifest = locate_manifest(path, metadata=model_metadata(sess), prefer_embedded=True)
    extra: dict = {"session": sess}
    if manifest is not None:  # an edgekd export: its own statistics, classes and input shape
        mean, std, kind = tuple(manifest.mean), tuple(manifest.std), manifest.output_kind
        extra.update(input_shape=tuple(manifest.input_shape), class_names=tuple(manifest.class_names),
                     manifest=manifest.source)
    else:
        mean, std = tuple(data.mean), tuple(data.std)
        kind = "probs" if outs[0].name == PROBS_NAME else "logits"
    extra["output_kind"] = kind
    static = [d if isinstance(d, int) else None for d in inp.shape]
    want = (None, *data.input_shape)
    if len(static) != 4 or any(s is not None and w is not None and s != w for s, w in zip(static, want)):
        raise EdgekdError(f"teacher {path.name} takes input of shape {list(inp.shape)} but the data's images are "
                          f"{list(data.input_shape)} (C, H, W)")
    norm = _normalizer(mean, std)

    def run(x01: torch.Tensor) -> torch.Tensor:
        x = norm(x01.detach().float().cpu()).numpy()
        out = sess.run([outs[0].name], {inp.name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return _as_logits(torch.from_numpy(out), kind).to(x01.device)

    return Teacher("onnx", path, sha, -1, mean, std, run, extra=extra)


def _load_logits_teacher(path: Path, sha: str) -> Teacher:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as d:
                key = "logits" if "logits" in d.files else (d.files[0] if len(d.files) == 1 else None)
                if key is None:
                    raise EdgekdError(f"teacher {path.name}: an .npz logits file needs a `logits` array "
                                      f"(has {', '.join(d.files)})")
                table = d[key]
        else:
            table = np.load(path, allow_pickle=False)
    except EdgekdError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt or pickled file
        raise EdgekdError(f"teacher {path.name}: cannot read logits ({first_line(exc, 120)})") from None
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
        raise EdgekdError(f"teacher {path.name}: logits must be a 2-D float array (samples, classes), "
                          f"got {table.dtype} {table.shape}")
    return Teacher("logits", path, sha, int(table.shape[1]), (), (), None, table=table)


def _load_zeroshot_teacher(spec: str, data, device: torch.device) -> Teacher:
    from edgekd.train.zeroshot import load_zeroshot

    z = load_zeroshot(spec, int(data.input_shape[0]), device)
    return Teacher("zeroshot", z.encoder, z.sha256, len(z.head.class_names), z.mean, z.std, z.run,
                   extra={"class_names": z.head.class_names, "output_kind": "logits", "name": z.name,
                          "input_size": z.input_size, "embedding_dim": z.embedding_dim})


def load_teacher(path: str | os.PathLike, data, device: torch.device | str = "cpu", *,
                 channels_last: bool = False) -> Teacher:
    """Load a teacher file of any kind and check it against `data` (an `ImageData`); refuse mismatches.

    `channels_last` stores a checkpoint teacher's weights channels-last, to match the student's batches.
    """
    if str(path).startswith(ZEROSHOT_PREFIX):
        teacher = _load_zeroshot_teacher(str(path), data, torch.device(device))
        check_teacher(teacher, data)
        return teacher
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise EdgekdError(f"teacher not found: {p}")
    device = torch.device(device)
    sha = sha256_file(p)
    suffix = p.suffix.lower()
    if suffix in (".npy", ".npz"):
        teacher = _load_logits_teacher(p, sha)
    elif suffix == ".onnx":
        teacher = _load_onnx_teacher(p, sha, data, device)
    elif _is_torchscript(p):
        teacher = _load_torchscript_teacher(p, sha, data, device)
    else:
        teacher = _load_checkpoint_teacher(p, sha, device, channels_last)
    check_teacher(teacher, data)
    return teacher


def check_teacher(teacher: Teacher, data) -> None:
    """Refuse a teacher whose classes or input shape do not fit `data` (sets `num_classes` when probed)."""
    name = teacher.label
    shape = teacher.extra.get("input_shape")
    if shape is not None and tuple(shape) != tuple(data.input_shape):
        raise EdgekdError(f"teacher {name} takes input of shape {list(shape)} but the data's images are "
                          f"{list(data.input_shape)} (C, H, W)")
    if teacher.kind in ("torchscript", "onnx"):  # probe: the only way to learn their class count
        try:
            out = teacher.run(torch.zeros(2, *data.input_shape))
        except Exception as exc:  # noqa: BLE001 - a model that rejects the data's shape
            raise EdgekdError(f"teacher {name} cannot run on the data's images {list(data.input_shape)} (C, H, W): "
                              f"{first_line(exc, 120)}") from None
        if out.ndim != 2 or out.shape[0] != 2:
            raise EdgekdError(f"teacher {name} must output (batch, classes) logits, got shape {list(out.shape)}")
        teacher.num_classes = int(out.shape[1])
    if teacher.num_classes != data.num_classes:
        raise EdgekdError(f"teacher {name} predicts {teacher.num_classes} classes but the data has {data.num_classes}")
    names = teacher.extra.get("class_names")
    if names is not None and tuple(names) != tuple(data.class_names):
        raise EdgekdError(f"teacher {name} was trained on classes {list(names)[:4]}... which differ from the data's "
                          f"{list(data.class_names)[:4]}...")
    if teacher.kind == "logits":
        rows = len(teacher.table)
        n_raw = len(data.train_ids) + len(data.val_ids)
        if rows not in (n_raw, len(data.y_train)):
            raise EdgekdError(f"teacher {name} has {rows} rows but the training split has {n_raw} images "
                              f"({len(data.y_train)} after the validation split)")


def cache_dir() -> Path:
    root = os.environ.get("EDGEKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekd")
    return Path(root) / "teacher-logits"


def _hash_array(h: "hashlib._Hash", a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(memoryview(a.reshape(-1).view(np.uint8)))


def cache_key(teacher: Teacher, data, split: str = "train", view: str = "eval") -> str:
    """Key of a cached teacher output: teacher file, data spec and content, split ids, view."""
    x, _ = data.split(split)
    ids = data.train_ids if split == "train" else (data.val_ids if split == "val" else np.arange(len(x)))
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "teacher": teacher.sha256, "kind": teacher.kind, "spec": data.spec,
                         "split": split, "view": view, "mean": list(teacher.mean), "std": list(teacher.std)},
                        sort_keys=True).encode())
    _hash_array(h, np.asarray(ids, dtype=np.int64))
    _hash_array(h, x)  # the images themselves: a dataset edited in place never hits a stale entry
    return h.hexdigest()[:32]


def _run_teacher(teacher: Teacher, x: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    from edgekd.data.loader import nhwc_to_tensor

    out = np.empty((len(x), teacher.num_classes), dtype=np.float16)
    for s in range(0, len(x), batch_size):
        xb = nhwc_to_tensor(x[s:s + batch_size]).to(device).float().div_(255.0)
        out[s:s + len(xb)] = teacher.run(xb).float().cpu().numpy().astype(np.float16)
    return out


def teacher_logits(teacher: Teacher, data, split: str = "train", view: str = "eval", *,
                   device: torch.device | str = "cpu", batch_size: int = 512, use_cache: bool = True,
                   log: Optional[Callable[[str], None]] = None) -> torch.Tensor:
    """(N, K) fp16 teacher logits for every image of a split, in the split's order (CPU tensor).

    A logits-file teacher is indexed by the split's ids; a model teacher is run once on the
    un-augmented images and the result cached (see module docstring).
    """
    if view not in VIEWS:
        raise EdgekdError(f"unknown teacher view {view!r}; cached views: {', '.join(VIEWS)}")
    x, _ = data.split(split)
    if teacher.kind == "logits":
        if split != "train":
            raise EdgekdError(f"teacher {teacher.path.name} is a logits file for the training split only")
        n_raw = len(data.train_ids) + len(data.val_ids)
        rows = teacher.table[data.train_ids] if len(teacher.table) == n_raw else teacher.table
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float16))
    path = cache_dir() / f"{cache_key(teacher, data, split, view)}.npz" if use_cache else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as d:
                table = d["logits"]
            if table.shape == (len(x), teacher.num_classes):
                return torch.from_numpy(table)
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt below
            pass
    if log:
        log(f"running teacher {teacher.label} on {len(x)} {split} images (cached for later runs)")
    table = _run_teacher(teacher, x, torch.device(device), batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
                np.savez(f, logits=table, teacher_sha256=np.array(teacher.sha256), spec=np.array(data.spec),
                         split=np.array(split), view=np.array(view))
    return torch.from_numpy(table)



def _train_digest(teacher: Teacher, data) -> "hashlib._Hash":
    """sha256 state over the teacher and the training split (spec, ids, the stored images, in bounded chunks)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "teacher": teacher.sha256, "kind": teacher.kind, "spec": data.spec,
                         "split": "train", "mean": list(teacher.mean), "std": list(teacher.std)},
                        sort_keys=True).encode())
    _hash_array(h, np.asarray(data.train_ids, dtype=np.int64))
    for s in range(0, len(data.x_train), 4096):  # the stored images the views are cut from, not their crops
        _hash_array(h, np.asarray(data.x_train[s:s + 4096]))
    return h


def view_logits(teacher: Teacher, data, plan, rounds: Sequence[int], *, device: torch.device | str = "cpu",
                batch_size: int = 256, log: Optional[Callable[[str], None]] = None) -> list[np.ndarray]:
    """Per round r of `rounds`: (N_train, K) fp16 teacher logits on round r of `plan` (a `ViewPlan`), rows in
    `data.x_train` order.

    Each image is augmented exactly as the loader augments it in that round (`plan.apply`), so a row
    equals the online teacher's output on that view up to fp16 rounding. Each round is cached on disk
    as `.npy` (key: teacher, training split, `plan.describe(r)`) and returned memory-mapped, so the
    processes of a node share one copy in the page cache.
    """
    if not teacher.runnable:
        raise EdgekdError(f"teacher {teacher.label} is a logits file: it cannot be run on augmented views")
    base = _train_digest(teacher, data)
    tables = []
    for r in rounds:
        h = base.copy()
        h.update(json.dumps(plan.describe(r), sort_keys=True).encode())
        path = cache_dir() / f"views-{h.hexdigest()[:32]}.npy"
        table = None
        if path.is_file():
            try:
                table = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt below
                table = None
        if table is None or table.shape != (len(data.x_train), teacher.num_classes):
            if log:
                log(f"running teacher {teacher.label} on view round {r} of the {len(data.x_train)} training images "
                    f"(cached for later runs)")
            _write_round(path, _run_views(teacher, data, plan, int(r), torch.device(device), batch_size))
            table = np.load(path, mmap_mode="r", allow_pickle=False)
        tables.append(table)
    return tables


def _run_views(teacher: Teacher, data, plan, r: int, device: torch.device, batch_size: int) -> np.ndarray:
    from edgekd.data.loader import nhwc_to_tensor

    n = len(data.x_train)
    out = np.empty((n, teacher.num_classes), dtype=np.float16)
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(s + batch_size, n))
        xb = nhwc_to_tensor(data.x_train[s:s + len(idx)]).to(device)
        out[s:s + len(idx)] = teacher.run(plan.apply(xb, idx, torch.full_like(idx, r))).float().cpu().numpy()
    return out


def _write_round(path: Path, table: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, table)
