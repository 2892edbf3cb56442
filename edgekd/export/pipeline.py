"""`run_export`: checkpoint -> surgery -> verified ONNX (+ FP16, INT8, engine or Jetson kit) + manifest.

Everything is written into a staging directory beside `--out` and moved into place only when
every check has passed, so a failure (exit 1 or 3) leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from edgekd import names
from edgekd.errors import EdgekdError
from edgekd.export.onnx import PARITY_MIN_AGREEMENT
from edgekd.export.options import ExportOptions, validate_options
from edgekd.export.tensorrt import ENGINE_FILE, ProofImages, TrtBuildOptions
from edgekd.io import host_tag, owner_tag, pid_alive, remove_stale, write_error

__all__ = ["ExportOptions", "ExportResult", "validate_options", "run_export", "real_images"]


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any]
    summary: list[str] = field(default_factory=list)


def make_staging_dir(out: Path) -> Path:
    """A fresh directory beside `out` (same filesystem, so the final move is a rename)."""
    if out.exists() and not out.is_dir():
        raise EdgekdError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / names.MANIFEST_FILE).is_file():
        raise EdgekdError(f"--out {out} is not empty and holds no edgekd export; choose another directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        restore_swapped_out(out)  # an export killed inside publish_dir
        remove_stale(out.parent, name=out.name)  # staging folders of killed exports (their pid is dead)
        staging = out.parent / f".{out.name}.staging-{owner_tag()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()  # not mkdtemp: its 0700 mode would end up on the published directory
        return staging
    except OSError as exc:
        raise EdgekdError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None


# `.OUT.old-<pid>@<host>`: the earlier export publish_dir swaps out (no host part: written before this rule)
_OLD_RE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9]*))?$")


def restore_swapped_out(out: Path) -> None:
    """Undo what an export killed inside `publish_dir` left beside `out` (its process is dead).

    Killed between the two renames: `out` is gone and the earlier export sits at `.OUT.old-<pid>@<host>`;
    it is put back (the killed export never finished, so the state before it is the one to keep; its
    staging folder goes with `remove_stale`). Killed after the second rename: `out` is the new export
    and the old one is deleted. A folder of a live process (an export publishing now) or of another
    host is left alone.
    """
    olds = []
    for p in out.parent.iterdir():
        m = _OLD_RE.match(p.name)
        if m and m["name"] == out.name and m["host"] in (None, host_tag()) and not pid_alive(int(m["pid"])):
            olds.append(p)
    for p in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):  # the newest earlier export first
        if not out.exists() and p.is_dir():
            os.replace(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)


def publish_dir(staging: Path, out: Path) -> None:
    """Replace `out` by `staging`: an earlier export there is swapped out, then deleted
    (a kill between the steps is undone by the next export: `restore_swapped_out`)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{owner_tag()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def real_images(data, split: str, n: Optional[int], mean, std,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
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
    if opts.format == "tensorrt" and opts.target != "jetson":
        # the engine is built here: fail in one line, before minutes of surgery and ONNX export, when
        # TensorRT, cuda-python or a CUDA GPU is missing (a Jetson build kit needs none of them)
        from edgekd.runtime.engine import collect_runtime_info

        collect_runtime_info()
    out = Path(opts.out)
    staging = make_staging_dir(out)
    try:
        result = _export_into(opts, staging, log, data)
        publish_dir(staging, out)
    except OSError as exc:  # a full disk while an exporter writes into staging: one line, nothing left
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(out, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.out_dir = out
    result.files = {k: out / p.relative_to(staging) for k, p in result.files.items()}
    log(f"export done -> {out} ({', '.join(sorted(p.name for p in result.files.values()))})")
    return result


def _export_into(opts: ExportOptions, stage: Path, log, data) -> ExportResult:
    from edgekd.deps import require
    from edgekd.export.manifest import build_manifest, embed_manifest
    from edgekd.io import sha256_file, write_json_atomic
    from edgekd.surgery import make_deploy_module

    onnx = require("onnx")
    ckpt, model, data, input_shape = _load_run(opts, data)
    mean, std = ckpt["mean"], ckpt["std"]
    x, y, split = real_images(data, "val", opts.verify_size, mean, std, opts.seed)
    log(f"edgekd export: {ckpt['model_name']} ({(ckpt.get('config') or {}).get('method', '?')}) from "
        f"{ckpt['path']}; verifying on {len(x)} {split} images of {data.spec}")

    # surgery: strip + fold, each proven on the real images
    deploy, report = make_deploy_module(model, x, y, fold=opts.fold, min_agreement=opts.min_agreement,
                                        max_accuracy_drop=opts.max_accuracy_drop)
    log(report.summary())
    proto, parity, graph, simplified = _verified_onnx(opts, ckpt, model, deploy, report, x, split, log)
    parity["split"] = split

    manifest = build_manifest(ckpt=ckpt, ckpt_sha256=sha256_file(ckpt["path"]), output_name=report.output_kind,
                              opset=opts.opset, exporter="torchscript" if opts.opset <= 17 else "dynamo",
                              surgery=report.to_dict(), parity=parity, graph=graph, simplified=simplified)
    embed_manifest(proto, manifest)
    files = {"onnx": stage / names.MODEL_ONNX}
    onnx.save(proto, str(files["onnx"]))

    # INT8 QDQ: by target flavour, with the accuracy budget on the validation split
    want_int8 = opts.int8 or opts.precision == "int8"
    if want_int8:
        for_tensorrt = opts.format == "tensorrt" or opts.target == "jetson"
        int8_target = opts.int8_target or ("tensorrt" if for_tensorrt else "cpu")
        manifest["int8"] = _export_int8(opts, int8_target, files, stage, data, mean, std, manifest, log)
    # FP16 (FP32 I/O): the strongly typed TensorRT FP16 build's input, and an artifact of its own
    if opts.fp16 or opts.precision == "fp16":
        manifest["fp16"] = _export_fp16(opts, files, stage, data, mean, std, manifest, log)

    manifest_path = stage / names.MANIFEST_FILE
    if opts.target == "jetson" or opts.format == "tensorrt":
        _add_engine_outputs(opts, stage, files, manifest, input_shape, log, _proof_images(opts, files, x, y, split))
    if opts.format == "openvino":  # IR from the verified ONNX files, proven again through OpenVINO
        from edgekd.export.openvino import export_openvino

        manifest["openvino"] = export_openvino(files, stage, deploy, x, real_images(data, "val", None, mean, std),
                                               opts.max_accuracy_drop, opts.parity_atol, log)
    manifest["files"] = {p.name: sha256_file(p) for p in files.values() if p.is_file() and p.parent == stage}
    write_json_atomic(manifest_path, manifest)
    files["manifest"] = manifest_path
    return ExportResult(out_dir=stage, files=files, manifest=manifest)


def _load_run(opts: ExportOptions, data) -> tuple[dict, Any, Any, tuple[int, int, int]]:
    """The checkpoint, its rebuilt training model, the data to verify on, and the (C, H, W) input shape."""
    from edgekd.data.dataset import load_dataset
    from edgekd.data.images import View
    from edgekd.surgery.deploy import resolve_fold
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    ckpt = load_checkpoint(opts.ckpt)
    model = rebuild_training_model(ckpt)
    resolve_fold(model, opts.fold)  # a fold that does not match the checkpoint fails before data is read
    cfg = ckpt.get("config", {}) or {}
    if data is None:
        spec = opts.data or ckpt.get("data_spec") or cfg.get("data")
        if not spec:
            raise EdgekdError("the checkpoint names no dataset to verify the export on; pass --data SPEC")
        view = View.from_config(ckpt.get("view") or cfg)  # the fixed-size regime of the run, if any
        data = load_dataset(spec, cfg.get("val_fraction", 0.1), cfg.get("split_seed", 0), view=view)
    input_shape = tuple(int(v) for v in ckpt["input_shape"])
    if tuple(data.input_shape) != input_shape:
        raise EdgekdError(f"dataset {data.spec} has images {data.input_shape}, the checkpoint expects {input_shape}")
    return ckpt, model, data, input_shape  # type: ignore[return-value]


def _verified_onnx(opts: ExportOptions, ckpt: dict, model, deploy, report, x: torch.Tensor, split: str, log):
    """Export `deploy` to ONNX, check, simplify, prove parity with torch on `x`, and check the graph
    against a plain student exported the same way (`split` names the images, for the log).
    Returns (proto, parity, graph, simplified)."""
    from edgekd.export.onnx import check_graph, check_onnx, check_parity, count_onnx_params, export_onnx, simplify_onnx
    from edgekd.models import build_model
    from edgekd.models.profile import count_params
    from edgekd.surgery.strip import training_only_parameters

    input_shape, output_name = tuple(int(v) for v in ckpt["input_shape"]), report.output_kind
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
                 if not k.startswith("kd_head.") or report.fold == "ce"}
    same_graph = extra == 0 and output_name == names.LOGITS_NAME
    graph = check_graph(proto, output_name, forbidden, count_onnx_params(plain_proto) + extra,
                        expected_nodes=len(plain_proto.graph.node) if same_graph else None)
    log(f"onnx: opset {opts.opset}, {graph['nodes']} nodes, {graph['params']:,} params"
        f"{' (simplified)' if simplified else ''}; parity max |diff| {parity['max_abs_diff']:.2e}, "
        f"top-1 agreement {parity['top1_agreement']:.1f}% on {parity['batch']} {split} images")
    return proto, parity, graph, simplified


def _proof_images(opts: ExportOptions, files: dict[str, Path], x: torch.Tensor, y: torch.Tensor,
                  split: str) -> ProofImages:
    """The engine proof's images: the verification images with ONNX Runtime FP32's outputs of model.onnx."""
    from edgekd.export.onnx import make_session, run_session

    xs = x.numpy()
    return ProofImages(x=xs, y=y.numpy(), reference=run_session(make_session(files["onnx"]), xs),
                       max_accuracy_drop=opts.max_accuracy_drop, split=split)


def _add_engine_outputs(opts: ExportOptions, stage: Path, files: dict[str, Path], manifest: dict,
                        input_shape: tuple[int, int, int], log, proof: ProofImages) -> None:
    """`--target jetson`: the build kit; `--format tensorrt`: the engine built (and proven) here.

    The TensorRT release decides which ONNX the engine is built from (edgekd.runtime.trt_version):
    the kit's `--jetpack`, or the TensorRT installed here. Updates `files`, `manifest`.
    """
    from edgekd.io import write_json_atomic

    by_name = {p.name: p for p in files.values()}
    if opts.target == "jetson":
        from edgekd.export.jetson import write_build_kit
        from edgekd.runtime.trt_version import policy_for_jetpack

        engine_src = by_name[policy_for_jetpack(opts.jetpack).onnx_file(opts.precision)]
        manifest_path = stage / names.MANIFEST_FILE
        write_json_atomic(manifest_path, manifest)  # the kit copies the manifest
        before = set(stage.rglob("*"))
        write_build_kit(engine_src, manifest_path, stage, _trt_options(opts), input_shape, jetpack=opts.jetpack,
                        proof=proof, output_name=manifest["output"]["name"])
        kit = sorted(p for p in stage.rglob("*") if p not in before and p.is_file())
        files.update({f"kit:{p.relative_to(stage)}": p for p in kit})
        manifest["jetson"] = {"build_kit": [str(p.relative_to(stage)) for p in kit], "onnx": engine_src.name,
                              "precision": opts.precision, "jetpack": opts.jetpack}
        log(f"jetson: build kit for JetPack {opts.jetpack} from {engine_src.name}: "
            f"{', '.join(str(p.relative_to(stage)) for p in kit)} (build and prove the engine on the device)")
    elif opts.format == "tensorrt":
        from edgekd.export.tensorrt import build_engine, installed_tensorrt

        policy = installed_tensorrt()
        engine_src = by_name[policy.onnx_file(opts.precision)]
        files["engine"] = stage / ENGINE_FILE
        info = build_engine(engine_src, files["engine"], _trt_options(opts), input_shape, proof=proof)
        manifest["tensorrt"] = {"engine": ENGINE_FILE, "onnx": engine_src.name, **(info or {})}
        log(f"tensorrt: engine {ENGINE_FILE} ({opts.precision}, {policy.describe()}), proven on "
            f"{info['proof']['n']} {proof.split} images against ONNX Runtime FP32")


def _export_int8(opts: ExportOptions, target: str, files: dict[str, Path], stage: Path, data, mean, std,
                 manifest: dict, log) -> dict:
    from edgekd.export.onnx import make_session
    from edgekd.export.quantize import check_accuracy_budget, quantize_int8

    calib_x, _, calib_split = real_images(data, "train", opts.calib_size, mean, std, opts.seed)
    files["int8"] = stage / names.MODEL_INT8_ONNX
    info = quantize_int8(files["onnx"], files["int8"], calib_x.numpy(), target, opts.calib_method,
                         opts.keep_float_layers, output_kind=manifest["output"]["kind"])
    info["calib_split"] = calib_split
    xv, yv, split = real_images(data, "val", None, mean, std)
    budget = check_accuracy_budget(make_session(files["onnx"]), make_session(files["int8"]), xv.numpy(), yv.numpy(),
                                   opts.max_accuracy_drop, split)
    info["accuracy"] = budget
    log(f"int8: QDQ {info['flavour']} ({info['activations']} activations, target {target}), {info['calib_method']} "
        f"calibration on {info['calib_size']} train images; top-1 {budget['int8_top1']:.2f}% vs FP32 "
        f"{budget['fp32_top1']:.2f}% on {budget['n']} {split} images (drop {budget['drop_points']:.2f} <= "
        f"{opts.max_accuracy_drop}){'; probability mix kept in float' if info['output'].startswith('float') else ''}")
    _embed_section(files["int8"], manifest, "int8", info)
    return info


def _export_fp16(opts: ExportOptions, files: dict[str, Path], stage: Path, data, mean, std, manifest: dict,
                 log) -> dict:
    """model.fp16.onnx with its accuracy budget and parity on the whole validation split (as INT8's)."""
    from edgekd.export.fp16 import check_fp16_budget, convert_fp16
    from edgekd.export.onnx import make_session

    files["fp16"] = stage / names.MODEL_FP16_ONNX
    info = convert_fp16(files["onnx"], files["fp16"])
    xv, yv, split = real_images(data, "val", None, mean, std)
    budget = check_fp16_budget(make_session(files["onnx"]), make_session(files["fp16"]), xv.numpy(), yv.numpy(),
                               opts.max_accuracy_drop, split)
    info["accuracy"] = budget
    log(f"fp16: {info['fp16_initializers']} FP16 weights, FP32 I/O; top-1 {budget['fp16_top1']:.2f}% vs FP32 "
        f"{budget['fp32_top1']:.2f}% on {budget['n']} {split} images (drop {budget['drop_points']:.2f} <= "
        f"{opts.max_accuracy_drop}), max |diff| {budget['max_abs_diff']:.2e}, top-1 agreement "
        f"{budget['top1_agreement']:.1f}%")
    _embed_section(files["fp16"], manifest, "fp16", info)
    return info


def _embed_section(path: Path, manifest: dict, key: str, info: dict) -> None:
    """Embed the manifest, with this variant's `key` section (its calibration/budget record), in its ONNX file."""
    from edgekd.deps import require
    from edgekd.export.manifest import embed_manifest

    onnx = require("onnx")
    model = onnx.load(str(path))
    embed_manifest(model, {**manifest, key: info})
    onnx.save(model, str(path))


def _trt_options(opts: ExportOptions) -> TrtBuildOptions:
    """`TrtBuildOptions` from the export options."""
    return TrtBuildOptions(precision=opts.precision, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
                           max_batch=opts.max_batch, workspace_mb=opts.workspace_mb, timing_cache=opts.timing_cache,
                           dla_core=opts.dla_core)
