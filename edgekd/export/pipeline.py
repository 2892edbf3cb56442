"""`run_export`: checkpoint -> surgery -> verified ONNX (+ INT8, engine or Jetson kit) + manifest.

Everything is written into a staging directory beside `--out` and moved into place only when
every check has passed, so a failure (exit 1 or 3) leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from edgekd import names
from edgekd.errors import EdgekdError
from edgekd.export.onnx import DEFAULT_OPSET, PARITY_ATOL, PARITY_MIN_AGREEMENT
from edgekd.export.quantize import CALIB_METHODS, DEFAULT_CALIB_SIZE, DEFAULT_MAX_ACCURACY_DROP, INT8_TARGETS

FORMATS = ("onnx", "tensorrt")
TARGETS = ("cpu", "jetson")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_FILE = getattr(names, "MODEL_ENGINE", "model.engine")


@dataclass(frozen=True)
class ExportOptions:
    """Options of `edgekd export` (DESIGN.md section 2); see the CLI help for each."""

    ckpt: str
    out: str
    format: str = "onnx"
    fold: Optional[str] = None  # exact | logit | ce | kd; default exact for a dual-head model
    opset: int = DEFAULT_OPSET
    int8: bool = False
    int8_target: Optional[str] = None  # cpu (U8S8) | tensorrt (S8S8); default from --format/--target
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = "minmax"
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    keep_float_layers: bool = False
    min_agreement: float = 99.0  # logit fold: top-1 agreement with the exact mix, percent
    target: str = "cpu"
    precision: str = "fp32"  # TensorRT builder precision
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    workspace_mb: int = 1024
    timing_cache: Optional[str] = None
    dla_core: Optional[int] = None
    data: Optional[str] = None  # override the checkpoint's data spec (e.g. the data moved)
    verify_size: int = 256
    parity_atol: float = PARITY_ATOL
    simplify: bool = True
    seed: int = 0


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any]
    summary: list[str] = field(default_factory=list)


def validate_options(o: ExportOptions) -> None:
    """Reject bad option values before any work is done."""
    checks = [(o.format in FORMATS, f"--format {o.format!r}: choose {' or '.join(FORMATS)}"),
              (o.target in TARGETS, f"--target {o.target!r}: choose {' or '.join(TARGETS)}"),
              (o.precision in PRECISIONS, f"--precision {o.precision!r}: choose one of {', '.join(PRECISIONS)}"),
              (o.int8_target is None or o.int8_target in INT8_TARGETS,
               f"--int8-target {o.int8_target!r}: choose {' or '.join(INT8_TARGETS)}"),
              (o.calib_method in CALIB_METHODS, f"--calib-method {o.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}"),
              (o.calib_size > 0, "--calib-size must be > 0"),
              (o.max_accuracy_drop >= 0, "--max-accuracy-drop must be >= 0"),
              (0 <= o.min_agreement <= 100, "--min-agreement is a percentage (0..100)"),
              (o.verify_size > 0, "verify_size must be > 0"),
              (1 <= o.min_batch <= o.opt_batch <= o.max_batch, "batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch")]
    for ok, msg in checks:
        if not ok:
            raise EdgekdError(msg)


def make_staging_dir(out: Path) -> Path:
    """A fresh directory beside `out` (same filesystem, so the final move is a rename)."""
    if out.exists() and not out.is_dir():
        raise EdgekdError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / names.MANIFEST_FILE).is_file():
        raise EdgekdError(f"--out {out} is not empty and holds no edgekd export; choose another directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()  # not mkdtemp: its 0700 mode would end up on the published directory
        return staging
    except OSError as exc:
        raise EdgekdError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None


def publish_dir(staging: Path, out: Path) -> None:
    """Replace `out` by `staging`: an earlier export there is swapped out, then deleted."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def real_images(data, split: str, n: Optional[int], mean, std, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Up to `n` normalised images (N, C, H, W) and labels of `split`, falling back to test if empty.

    A seeded subset when `n` is smaller than the split, so the images are the same on every run.
    """
    from edgekd.data.loader import nhwc_to_tensor
    from edgekd.data.transforms import eval_transform

    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(y) == 0 and split != "test":
        split, x, y = "test", data.x_test, data.y_test
    if len(y) == 0:
        raise EdgekdError(f"{data.spec}: no images to verify the export on (validation and test splits are empty)")
    if n is not None and n < len(y):
        idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
        x, y = x[idx], y[idx]
    return eval_transform(nhwc_to_tensor(x), mean, std), torch.from_numpy(np.asarray(y, dtype=np.int64)), split


def run_export(opts: ExportOptions, log: Callable[[str], None] = print, data=None) -> ExportResult:
    """Export a checkpoint as configured; every artifact is verified before it is published.

    Args:
        opts: the export options.
        log: where progress lines go.
        data: an already loaded `ImageData` of the run (tests, demo); loaded from the checkpoint's
            data spec otherwise.

    Raises:
        EdgekdError: bad checkpoint, options or output directory (exit 1).
        GateError: a verification gate failed (exit 3).
    """
    validate_options(opts)
    out = Path(opts.out)
    staging = make_staging_dir(out)
    try:
        result = _export_into(opts, staging, log, data)
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.out_dir = out
    result.files = {k: out / p.relative_to(staging) for k, p in result.files.items()}
    log(f"export done -> {out} ({', '.join(sorted(p.name for p in result.files.values()))})")
    return result


def _export_into(opts: ExportOptions, stage: Path, log, data) -> ExportResult:
    from edgekd.data.dataset import load_dataset
    from edgekd.export.manifest import build_manifest, embed_manifest
    from edgekd.export.onnx import (check_graph, check_onnx, check_parity, count_onnx_params, export_onnx,
                                    simplify_onnx)
    from edgekd.io import sha256_file, write_json_atomic
    from edgekd.models import build_model
    from edgekd.models.profile import count_params
    from edgekd.surgery import make_deploy_module
    from edgekd.surgery.deploy import resolve_fold
    from edgekd.surgery.strip import training_only_parameters
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    from edgekd.deps import require

    onnx = require("onnx")
    ckpt = load_checkpoint(opts.ckpt)
    model = rebuild_training_model(ckpt)
    resolve_fold(model, opts.fold)  # a fold that does not match the checkpoint fails before data is read
    cfg = ckpt.get("config", {}) or {}
    if data is None:
        spec = opts.data or ckpt.get("data_spec") or cfg.get("data")
        if not spec:
            raise EdgekdError("the checkpoint names no dataset to verify the export on; pass --data SPEC")
        data = load_dataset(spec, cfg.get("val_fraction", 0.1), cfg.get("split_seed", 0))
    input_shape = tuple(int(v) for v in ckpt["input_shape"])
    if tuple(data.input_shape) != input_shape:
        raise EdgekdError(f"dataset {data.spec} has images {data.input_shape}, the checkpoint expects {input_shape}")
    mean, std = ckpt["mean"], ckpt["std"]
    x, y, split = real_images(data, "val", opts.verify_size, mean, std, opts.seed)
    log(f"edgekd export: {ckpt['model_name']} ({cfg.get('method', '?')}) from {ckpt['path']}; "
        f"verifying on {len(x)} {split} images of {data.spec}")

    # surgery: strip + fold, each proven on the real images
    deploy, report = make_deploy_module(model, x, y, fold=opts.fold, min_agreement=opts.min_agreement,
                                        max_accuracy_drop=opts.max_accuracy_drop)
    log(report.summary())
    output_name = report.output_kind

    # ONNX: export, check, simplify, parity, graph check against a plain student exported the same way
    proto = export_onnx(deploy, input_shape, output_name, opts.opset)
    check_onnx(proto)
    simplified = False
    if opts.simplify:
        proto, simplified = simplify_onnx(proto)
        if simplified:
            check_onnx(proto)
    parity = check_parity(proto, deploy, x, atol=opts.parity_atol, min_agreement=PARITY_MIN_AGREEMENT)
    # the reference: a fresh zoo student holding the trained student's weights (same weights, because
    # the exporter folds BN and merges identical initializers, so counts depend on the values)
    plain = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    plain.load_state_dict(model.student.state_dict())
    plain.eval()
    plain_proto = export_onnx(plain, input_shape, names.LOGITS_NAME, opts.opset)
    if simplified:
        plain_proto, _ = simplify_onnx(plain_proto)
    extra = count_params(deploy) - count_params(plain)  # a folded second head (exact fold) adds its rows
    # training-only weights must not be in the graph; the KD head's are, by design, unless folded away (ce)
    forbidden = {k: v for k, v in training_only_parameters(model).items()
                 if k.startswith("aux_heads.") or report.fold == "ce"}
    graph = check_graph(proto, output_name, forbidden, count_onnx_params(plain_proto) + extra,
                        expected_nodes=len(plain_proto.graph.node) if extra == 0 and output_name == names.LOGITS_NAME else None)
    log(f"onnx: opset {opts.opset}, {graph['nodes']} nodes, {graph['params']:,} params"
        f"{' (simplified)' if simplified else ''}; parity max |diff| {parity['max_abs_diff']:.2e}, "
        f"top-1 agreement {parity['top1_agreement']:.1f}% on {parity['batch']} {split} images")
    parity["split"] = split

    manifest = build_manifest(ckpt=ckpt, ckpt_sha256=sha256_file(ckpt["path"]), output_name=output_name,
                              opset=opts.opset, exporter="torchscript" if opts.opset <= 17 else "dynamo",
                              surgery=report.to_dict(), parity=parity, graph=graph, simplified=simplified)
    embed_manifest(proto, manifest)
    files = {"onnx": stage / names.MODEL_ONNX}
    onnx.save(proto, str(files["onnx"]))

    # INT8 QDQ: by target flavour, with the accuracy budget on the validation split
    want_int8 = opts.int8 or opts.precision == "int8"
    if want_int8:
        int8_target = opts.int8_target or ("tensorrt" if opts.format == "tensorrt" or opts.target == "jetson" else "cpu")
        manifest["int8"] = _export_int8(opts, int8_target, files, stage, data, mean, std, manifest, log)

    engine_src = files.get("int8") if opts.precision == "int8" else files["onnx"]
    manifest_path = stage / names.MANIFEST_FILE
    if opts.target == "jetson":
        jetson = _import_optional("edgekd.export.jetson", "the Jetson build kit (--target jetson)")
        write_json_atomic(manifest_path, manifest)  # the kit copies the manifest
        before = set(stage.iterdir())
        jetson.write_build_kit(engine_src, manifest_path, stage, _trt_options(opts), input_shape)
        kit = sorted(p for p in stage.iterdir() if p not in before)
        files.update({f"kit:{p.name}": p for p in kit})
        manifest["jetson"] = {"build_kit": [p.name for p in kit], "onnx": engine_src.name, "precision": opts.precision}
        log(f"jetson: build kit {', '.join(p.name for p in kit)} (build the engine on the device)")
    elif opts.format == "tensorrt":
        trt = _import_optional("edgekd.export.tensorrt", "TensorRT export (--format tensorrt)")
        files["engine"] = stage / ENGINE_FILE
        info = trt.build_engine(engine_src, files["engine"], _trt_options(opts), input_shape)
        manifest["tensorrt"] = {"engine": ENGINE_FILE, "onnx": engine_src.name, **(info or {})}
        log(f"tensorrt: engine {ENGINE_FILE} ({opts.precision})")
    manifest["files"] = {p.name: sha256_file(p) for p in files.values() if p.is_file() and p.parent == stage}
    write_json_atomic(manifest_path, manifest)
    files["manifest"] = manifest_path
    return ExportResult(out_dir=stage, files=files, manifest=manifest)


def _export_int8(opts: ExportOptions, target: str, files: dict[str, Path], stage: Path, data, mean, std,
                 manifest: dict, log) -> dict:
    from edgekd.deps import require
    from edgekd.export.manifest import embed_manifest
    from edgekd.export.onnx import make_session
    from edgekd.export.quantize import check_accuracy_budget, quantize_int8

    onnx = require("onnx")
    calib_x, _, calib_split = real_images(data, "train", opts.calib_size, mean, std, opts.seed)
    files["int8"] = stage / names.MODEL_INT8_ONNX
    info = quantize_int8(files["onnx"], files["int8"], calib_x.numpy(), target, opts.calib_method, opts.keep_float_layers)
    info["calib_split"] = calib_split
    xv, yv, split = real_images(data, "val", None, mean, std)
    budget = check_accuracy_budget(make_session(files["onnx"]), make_session(files["int8"]), xv.numpy(), yv.numpy(),
                                   opts.max_accuracy_drop, split)
    info["accuracy"] = budget
    log(f"int8: QDQ {info['flavour']} ({info['activations']} activations, target {target}), {info['calib_method']} "
        f"calibration on {info['calib_size']} train images; top-1 {budget['int8_top1']:.2f}% vs FP32 "
        f"{budget['fp32_top1']:.2f}% on {budget['n']} {split} images (drop {budget['drop_points']:.2f} <= "
        f"{opts.max_accuracy_drop})")
    q = onnx.load(str(files["int8"]))
    embed_manifest(q, {**manifest, "int8": info})
    onnx.save(q, str(files["int8"]))
    return info


def _import_optional(module: str, what: str):
    import importlib
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise EdgekdError(f"{what} is not available in this build of edgekd ({module} is missing)")
    return importlib.import_module(module)


def _trt_options(opts: ExportOptions):
    """`TrtBuildOptions` from the export options (only the fields that class declares)."""
    trt = _import_optional("edgekd.export.tensorrt", "TensorRT build options")
    cls = trt.TrtBuildOptions
    wanted = dict(precision=opts.precision, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
                  max_batch=opts.max_batch, workspace_mb=opts.workspace_mb, timing_cache=opts.timing_cache,
                  dla_core=opts.dla_core, target=opts.target, int8=opts.precision == "int8")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in wanted.items() if k in fields})
