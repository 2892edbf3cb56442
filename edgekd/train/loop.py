"""The fit loop: optimizer, schedule, per-epoch validation, checkpoints, metrics and resume.

Distributed-ready: under torch.distributed (see `edgekd.train.distributed`) each rank trains on
its shard, gradients are synchronised by DistributedDataParallel, metrics are all-reduced and
only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from edgekd import names
from edgekd.config import TrainConfig, config_from_dict, config_to_dict, save_config
from edgekd.data import ImageData, load_dataset
from edgekd.data.loader import BatchLoader
from edgekd.errors import CheckpointError, ConfigError, EdgekdError
from edgekd.models import build_model
from edgekd.train.checkpoint import load_checkpoint, save_checkpoint
from edgekd.train.evaluate import evaluate, summarize
from edgekd.train.methods import build_method


@dataclass
class RunResult:
    out_dir: Path
    best_val_acc: float
    test_acc: float
    epochs_run: int
    summary: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgekdError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine/step/constant."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm and step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1, total_steps - warm)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    drops = sum(progress >= m for m in cfg.milestones)
    return cfg.lr * (cfg.gamma ** drops)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # no weight decay on BN parameters and biases (standard for CIFAR ResNets)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


class _StepModule(nn.Module):
    """Runs `method.loss` inside a module forward so DistributedDataParallel sees the parameters."""

    def __init__(self, model: nn.Module, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch, epoch: int):
        return self.method.loss(self.model, batch, epoch)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _dist():
    """(rank, world_size) when torch.distributed is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    if _dist()[1] == 1:
        return sums
    keys = sorted(sums)  # the same order on every rank (every rank has the same keys)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    reduced = dict(zip(keys, t.tolist()))
    return {k: reduced[k] for k in sums}  # the caller's order (heads are logged in it)


def _use_channels_last(cfg: TrainConfig) -> bool:
    return cfg.channels_last == "on" or cfg.channels_last == "auto"


def _autocast(cfg: TrainConfig, device: torch.device):
    enabled = cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Optional[dict]]:
    """Resolve `--resume`: the stored config is used (epochs may be raised); returns (cfg, ckpt)."""
    if not cfg.resume:
        return cfg, None
    run = Path(cfg.resume)
    last = run / names.LAST_CKPT
    if not last.is_file():
        raise CheckpointError(f"cannot resume: {last} does not exist")
    ckpt = load_checkpoint(last)
    stored = config_from_dict(ckpt["config"])
    resumed = replace(stored, out=str(run), resume=str(run), epochs=max(stored.epochs, cfg.epochs if cfg.epochs != TrainConfig.epochs else stored.epochs),
                      progress=cfg.progress)
    return resumed, ckpt


def train(cfg: TrainConfig, data: Optional[ImageData] = None, log=print) -> RunResult:
    """Train a student as configured; write config, metrics and checkpoints to `cfg.out`."""
    from edgekd.train.distributed import broadcast_state_from_rank0, share_from_rank0

    rank, world = _dist()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    # rank 0 reads last.pt and shares it: every rank resumes alike (and node 0 alone needs the file)
    cfg, resume_ckpt = share_from_rank0(lambda: prepare_run(cfg))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    data = data or load_dataset(cfg.data, cfg.val_fraction, cfg.split_seed)
    out = Path(cfg.out)
    metrics_path = out / names.METRICS_FILE
    history: list[dict] = []  # metrics.jsonl records (rank 0), rewritten atomically every epoch

    def prepare_run_dir() -> None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise EdgekdError(f"cannot write to run directory {out}: {exc.strerror or exc}") from None
        if resume_ckpt is None and (out / names.LAST_CKPT).exists():
            raise ConfigError(f"{out} already holds a run; use --resume {out} or another --out")
        save_config(cfg, out / names.CONFIG_FILE)
        if resume_ckpt is not None:  # keep the epochs last.pt holds; a later line is from a cut-short epoch
            history.extend(r for r in read_metrics(metrics_path) if r.get("epoch", 0) <= int(resume_ckpt["epoch"]))
            write_metrics(metrics_path, history)

    share_from_rank0(prepare_run_dir)  # only rank 0 touches the directory; its error stops every rank

    c, h, w = data.input_shape
    model_kwargs = {"num_classes": data.num_classes, "in_channels": c}
    student = build_model(cfg.model, **model_kwargs)
    method = build_method(cfg, data, device)
    model = method.build(student).to(device)
    channels_last = _use_channels_last(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)

    start_epoch, global_step, best_val = 0, 0, -1.0
    if resume_ckpt is not None:
        if resume_ckpt["model_name"] != cfg.model:
            raise CheckpointError("checkpoint model does not match the run's config")
        model.load_state_dict(resume_ckpt["model_state"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        method.load_state_dict(resume_ckpt.get("method_state", {}))
        start_epoch = int(resume_ckpt["epoch"])
        global_step = int(resume_ckpt["global_step"])
        best_val = float(resume_ckpt.get("best_val_acc", -1.0))
        if "rng_torch" in resume_ckpt:
            torch.set_rng_state(resume_ckpt["rng_torch"])
        if rank == 0 and int(resume_ckpt.get("world_size", world)) != world:
            log(f"note: resuming a run trained with {resume_ckpt['world_size']} process(es) on {world}: the global "
                f"batch changes from {cfg.batch_size * int(resume_ckpt['world_size'])} to {cfg.batch_size * world}")

    step_module: nn.Module = _StepModule(model, method)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(method, "find_unused_parameters", False))

    loader_kw = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last)
    train_loader = getattr(method, "make_train_loader", None)
    if train_loader is not None:
        train_loader = train_loader(rank=rank, world_size=world, **loader_kw)
    else:
        train_loader = BatchLoader(data.x_train, data.y_train, cfg.batch_size, train=cfg.augment, shuffle=True,
                                   drop_last=True, hflip=data.hflip, seed=cfg.seed, rank=rank, world_size=world,
                                   **loader_kw)
    # evaluation shards are uneven (no padding): every image counts once, as in a single process
    eval_kw = dict(train=False, rank=rank, world_size=world, even_shards=False, **loader_kw)
    val_loader = BatchLoader(data.x_val, data.y_val, cfg.eval_batch_size, **eval_kw) if len(data.y_val) else None
    steps_per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
    if steps_per_epoch == 0:
        raise ConfigError(f"batch size {cfg.batch_size} x {world} process(es) exceeds the {len(data.y_train)} training images")
    total_steps = steps_per_epoch * cfg.epochs
    if rank == 0:
        log(f"edgekd train: {cfg.model} ({cfg.method}) on {data.spec}: {len(data.y_train)} train / "
            f"{len(data.y_val)} val / {len(data.y_test)} test images, {data.num_classes} classes, device {device}, "
            f"batch {cfg.batch_size} x {world} process(es) = global batch {cfg.batch_size * world}")

    def payload(epoch: int, val_acc: float, metrics: dict) -> dict:
        return {
            "model_name": cfg.model, "model_kwargs": model_kwargs,
            "model_state": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "method_state": method.state_dict(),
            "config": config_to_dict(cfg), "class_names": list(data.class_names),
            "input_shape": [c, h, w], "mean": list(data.mean), "std": list(data.std),
            "output_kind": model.output_kind, "data_spec": data.spec,
            "epoch": epoch, "global_step": global_step, "best_val_acc": best_val,
            "val_acc": val_acc, "metrics": metrics, "rng_torch": torch.get_rng_state(), "world_size": world,
        }

    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        sums = {"n": 0.0, "loss_sum": 0.0, "correct": 0.0}
        progress = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress and rank == 0)
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            lr = lr_at(cfg, global_step, total_steps, steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with _autocast(cfg, device):
                loss, logits = step_module(batch, epoch)
            if not torch.isfinite(loss):
                kept = f"; last good checkpoint kept at {out / names.LAST_CKPT}" if (out / names.LAST_CKPT).exists() else ""
                raise EdgekdError(f"loss became {float(loss)} at epoch {epoch + 1}, step {i + 1}; "
                                  f"lower --lr or check the data{kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            n = len(batch.y)
            sums["n"] += n
            sums["loss_sum"] += float(loss.detach()) * n
            sums["correct"] += float((logits.detach().argmax(1) == batch.y).sum())
            progress.update(i + 1, sums, time.perf_counter() - t0)
        progress.close()
        method.on_epoch_end(model, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        sums = _all_reduce(sums, device)
        record = {"epoch": epoch + 1, "lr": round(lr, 6),
                  "train_loss": round(sums["loss_sum"] / max(sums["n"], 1), 5),
                  "train_acc": round(100.0 * sums["correct"] / max(sums["n"], 1), 3),
                  "img_per_s": round(sums["n"] / train_time, 1), "epoch_time_s": round(train_time, 2)}
        broadcast_state_from_rank0(model, buffers_only=True)  # BN statistics: score what rank 0 saves
        if val_loader is not None:
            record.update(summarize(_all_reduce(evaluate(model, val_loader, data.num_classes), device), "val"))
        val_acc = record.get("val_acc", record["train_acc"])
        improved = val_acc > best_val
        best_val = max(best_val, val_acc)
        record["best_val_acc"] = round(best_val, 4)
        if rank == 0:  # metrics first: a line past last.pt's epoch is dropped on resume
            history.append(record)
            write_metrics(metrics_path, history)
            save_checkpoint(out / names.LAST_CKPT, payload(epoch + 1, val_acc, record))
            if improved:
                save_checkpoint(out / names.BEST_CKPT, payload(epoch + 1, val_acc, record))
            log(_format_record(record))

    # post-training hooks (e.g. DHO's alpha/beta search on validation) may update the model
    on_train_end = getattr(method, "on_train_end", None)
    test_loader = BatchLoader(data.x_test, data.y_test, cfg.eval_batch_size, **eval_kw)
    best_path = out / names.BEST_CKPT

    def load_best() -> None:  # evaluate (and finalise) the best checkpoint
        if best_path.exists():
            model.load_state_dict(load_checkpoint(best_path)["model_state"])

    share_from_rank0(load_best)  # waits for rank 0's writes; no shared filesystem needed
    broadcast_state_from_rank0(model)
    if on_train_end is not None:
        on_train_end(model, val_loader)
        broadcast_state_from_rank0(model, buffers_only=True)  # e.g. DHO's mix: evaluate what rank 0 saves
    test = summarize(_all_reduce(evaluate(model, test_loader, data.num_classes), device), "test")
    summary = {"model": cfg.model, "method": cfg.method, "data": data.spec, "epochs": cfg.epochs,
               "best_val_acc": round(best_val, 4), **test, "batch_size": cfg.batch_size, "world_size": world,
               "global_batch": cfg.batch_size * world}
    if rank == 0:
        if on_train_end is not None and best_path.exists():  # the hook changed the model: store it
            ck = load_checkpoint(best_path)
            ck["model_state"] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            ck.pop("path", None)
            save_checkpoint(best_path, {k: v for k, v in ck.items() if k not in ("format", "format_version", "edgekd_version")})
        from edgekd.io import write_json_atomic

        write_json_atomic(out / names.SUMMARY_FILE, summary)
        log(f"done: best val {best_val:.2f}%, test {test['test_acc']:.2f}% -> {out / names.BEST_CKPT}")
    return RunResult(out, best_val, test["test_acc"], cfg.epochs, summary)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file ([] when absent); a torn last line is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def write_metrics(path: Path, records: list[dict]) -> None:
    """Rewrite metrics.jsonl atomically (a few hundred bytes per epoch: cheap, never half-written)."""
    from edgekd.io import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def _format_record(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}", f"train {r['train_acc']:.2f}%"]
    if "val_acc" in r:
        parts.append(f"val {r['val_acc']:.2f}%")
    extra = [f"{k[len('val_acc_'):]} {v:.2f}%" for k, v in r.items() if k.startswith("val_acc_") and k != "val_acc_main"]
    if extra:
        parts.append("heads: " + ", ".join(extra))
    parts += [f"{r['img_per_s']:.0f} img/s", f"lr {r['lr']:.4g}"]
    return "  ".join(parts)


class _Progress:
    """A rich progress bar on a terminal; nothing when output is redirected."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(desc, total=total, info="")

    def update(self, step: int, sums: dict, elapsed: float) -> None:
        if self.bar is not None:
            n = max(sums["n"], 1)
            info = f"loss {sums['loss_sum'] / n:.3f} acc {100 * sums['correct'] / n:.1f}% {sums['n'] / max(elapsed, 1e-9):.0f} img/s"
            self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
