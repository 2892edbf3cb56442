"""Human-readable descriptions: the model zoo table and checkpoint summaries."""

from __future__ import annotations

from pathlib import Path


def zoo_rows(input_shape=(3, 32, 32), num_classes: int = 10) -> list[dict]:
    from edgekd.models import ZOO, build_model
    from edgekd.models.profile import count_macs, count_params

    rows = []
    for name in ZOO:
        m = build_model(name, num_classes, input_shape[0])
        rows.append({"model": name, "params": count_params(m), "macs": count_macs(m, input_shape),
                     "stages": [(s.channels, s.stride) for s in m.stage_info]})
    return rows


def zoo_table() -> str:
    lines = ["| model | params | FLOPs (MACs) | stages (channels, stride) |", "|---|---:|---:|---|"]
    for r in zoo_rows():
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.3f}M | {r['macs'] / 1e6:.1f}M | "
                     + ", ".join(f"{c}@/{s}" for c, s in r["stages"]) + " |")
    return "\n".join(lines)


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
        f"epoch:        {ck.get('epoch')} / {ck['config'].get('epochs')}   val acc: {ck.get('val_acc', float('nan')):.2f}%",
        f"input:        {list(shape)} NCHW, mean {ck['mean']}, std {ck['std']}",
        f"classes:      {len(ck['class_names'])}: {', '.join(ck['class_names'][:10])}{' ...' if len(ck['class_names']) > 10 else ''}",
        f"output:       {ck.get('output_kind', 'logits')}",
        f"params:       {deploy:,} deploy (student) / {total:,} with training-only parts",
        f"FLOPs (MACs): {count_macs(student, shape) / 1e6:.2f}M per image (student)",
    ]
    return "\n".join(lines)
