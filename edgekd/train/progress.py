"""What a training run prints per epoch (the run's progress bar and periodic lines: edgekd.progress)."""

from __future__ import annotations


def format_record(r: dict) -> str:
    """One epoch's metrics record as the line `edgekd train` prints."""
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}", f"train {r['train_acc']:.2f}%"]
    if "val_acc" in r:
        parts.append(f"val {r['val_acc']:.2f}%")
    extra = [f"{k[len('val_acc_'):]} {v:.2f}%" for k, v in r.items()
             if k.startswith("val_acc_") and k != "val_acc_main"]
    if extra:
        parts.append("heads: " + ", ".join(extra))
    parts += [f"{r['img_per_s']:.0f} img/s", f"lr {r['lr']:.4g}"]
    return "  ".join(parts)
