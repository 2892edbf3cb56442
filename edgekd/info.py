"""Human-readable descriptions: the model zoo table and checkpoint summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def zoo_rows(input_shape: Optional[tuple[int, int, int]] = None, num_classes: int = 10) -> list[dict]:
    """Params, MACs and stages of every zoo model, for `num_classes` classes.

    MACs are for one image of `input_shape` (C, H, W), or, by default, of 3 x S x S at the model's native
    size S (edgekd.models.native_size: 32 for the CIFAR zoo, 224 for the ImageNet layout): a 224-px model
    at 32 px is not what anyone deploys.
    """
    from edgekd.models import ZOO, build_model, native_size
    from edgekd.models.profile import count_macs, count_params

    rows = []
    for name in ZOO:
        shape = tuple(input_shape) if input_shape is not None else (3, native_size(name), native_size(name))
        m = build_model(name, num_classes, shape[0])
        rows.append({"model": name, "params": count_params(m), "macs": count_macs(m, shape), "input_shape": shape,
                     "stages": [(s.channels, s.stride) for s in m.stage_info]})
    return rows


def zoo_table() -> str:
    """The README's zoo table: MACs at each model's native input (the `input` column), 10 classes."""
    lines = ["| model | params | FLOPs (MACs) | input (C x H x W) | stages (channels, stride) |",
             "|---|---:|---:|---|---|"]
    for r in zoo_rows():
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.3f}M | {r['macs'] / 1e6:.1f}M | "
                     + "x".join(str(v) for v in r["input_shape"]) + " | "
                     + ", ".join(f"{c}@/{s}" for c, s in r["stages"]) + " |")
    return "\n".join(lines)


def _view_lines(view: Optional[dict]) -> list[str]:
    """The evaluation view of a fixed-size run (ckpt["view"]), as `describe_checkpoint` prints it."""
    if not view:
        return []
    return [f"view:         centred {view['image_size']}-px crop of {view['resize']}-px squares "
            f"(crop_ratio {view['crop_ratio']}, --image-size {view['image_size']})"]


def describe_checkpoint(path: Path) -> str:
    from edgekd.models.profile import count_macs, count_params
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    ck = load_checkpoint(path)
    model = rebuild_training_model(ck)
    shape = tuple(ck["input_shape"])
    student = model.student
    total, deploy = count_params(model), count_params(student)
    lines = [
        f"checkpoint:   {ck['path']} (edgekd {ck.get('edgekd_version')})",
        f"model:        {ck['model_name']} {ck['model_kwargs']}",
        f"method:       {ck['config'].get('method')}   data: {ck.get('data_spec')}",
        f"epoch:        {ck.get('epoch')} / {ck['config'].get('epochs')}   "
        f"val acc: {ck.get('val_acc', float('nan')):.2f}%",
        f"input:        {list(shape)} NCHW, mean {ck['mean']}, std {ck['std']}",
        *_view_lines(ck.get("view")),
        f"classes:      {len(ck['class_names'])}: {', '.join(ck['class_names'][:10])}"
        f"{' ...' if len(ck['class_names']) > 10 else ''}",
        f"output:       {ck.get('output_kind', 'logits')}",
        f"params:       {deploy:,} deploy (student) / {total:,} with training-only parts",
        f"FLOPs (MACs): {count_macs(student, shape) / 1e6:.2f}M per image (student)",
    ]
    return "\n".join(lines)
