"""The fit loop: set a run up, train it epoch by epoch, finish it.

`train` reads as three steps: `setup_run` (config, run directory, data, model, method, optimizer,
resume, loaders), `run_epoch` (training steps, validation, checkpoints, metrics) and `finish_run`
(best weights, the method's end-of-training step, test, summary). What a method does is behind the
`edgekd.train.method.Method` interface; what ranks do together is `edgekd.train.collective`.

Distributed-ready: under torch.distributed (started by `edgekd.train.distributed`) each rank trains
on its shard, gradients are synchronised by DistributedDataParallel, metrics are all-reduced and
only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from edgekd import names
from edgekd.config import TrainConfig, save_config
from edgekd.data import ImageData, load_dataset
from edgekd.data.images import View
from edgekd.data.loader import Batch, BatchLoader
from edgekd.data.readers import ImagePolicy
from edgekd.errors import CheckpointError, ConfigError, EdgekdError
from edgekd.io import remove_stale, write_json_atomic, write_text_atomic
from edgekd.lock import run_lock
from edgekd.models import build_model
from edgekd.progress import RunProgress, format_duration
from edgekd.train.checkpoint import build_payload, load_checkpoint, save_checkpoint, training_state
from edgekd.train.collective import (
    all_reduce_sums,
    broadcast_state_from_rank0,
    rank_and_world,
    rank_device,
    share_from_rank0,
)
from edgekd.train.evaluate import evaluate, summarize
from edgekd.train.method import Method, TrainLoader
from edgekd.train.methods import build_method
from edgekd.train.model import TrainingModel, build_training_model, use_channels_last
from edgekd.train.precision import autocast, make_grad_scaler, resolve_precision
from edgekd.train.progress import format_record

Log = Callable[[str], None]


@dataclass
class RunResult:
    out_dir: Path
    best_val_acc: float
    test_acc: float
    epochs_run: int
    summary: dict


@dataclass
class TrainState:
    """The counters a checkpoint stores and a resume restores."""

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps taken
    best_val_acc: float = -1.0


@dataclass
class Run:
    """Everything `setup_run` builds once; `run_epoch` and `finish_run` read it."""

    cfg: TrainConfig
    data: ImageData
    device: torch.device
    rank: int
    world: int
    log: Log
    out: Path
    model: TrainingModel
    method: Method
    optimizer: torch.optim.Optimizer
    step_module: nn.Module  # the model and the method's loss, DDP-wrapped on more than one process
    train_loader: TrainLoader
    val_loader: Optional[BatchLoader]
    channels_last: bool
    steps_per_epoch: int
    history: list[dict]  # metrics.jsonl records (rank 0), rewritten atomically every epoch
    scaler: Optional[torch.amp.GradScaler] = None  # fp16 only (edgekd.train.precision)
    progress: Optional[RunProgress] = None  # the run's bar / periodic lines (rank 0); set by `train`
    started: float = 0.0  # perf_counter when this process's run began (the final line's total time)


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

    def __init__(self, model: nn.Module, method: Method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.method.loss(self.model, batch, epoch)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def with_precision(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """`cfg` with its precision resolved for `device` (never `auto`; the legacy `amp` key folded in)."""
    return replace(cfg, precision=resolve_precision(cfg.precision, device, amp=cfg.amp), amp=None)


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
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------- setup

def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Optional[dict]]:
    """Read the checkpoint of `--resume RUN`; returns (cfg writing to RUN, last.pt) or (cfg, None).

    `cfg` is already layered over the run's stored config (`edgekd.config.build_config`), so
    `--resume RUN --epochs 10` trains RUN to 10 epochs; fewer epochs than RUN has done is an error.
    """
    if not cfg.resume:
        return cfg, None
    run = Path(cfg.resume)
    last = run / names.LAST_CKPT
    if not last.is_file():
        raise CheckpointError(f"cannot resume: {last} does not exist")
    ckpt = load_checkpoint(last)
    if cfg.epochs < int(ckpt["epoch"]):
        raise ConfigError(f"--epochs {cfg.epochs}: {run} has already trained {ckpt['epoch']} epochs")
    return replace(cfg, out=str(run), resume=str(run)), ckpt


def prepare_run_dir(cfg: TrainConfig, resume_ckpt: Optional[dict]) -> list[dict]:
    """Check the run directory (rank 0); returns the metrics history a resume continues.

    A resumed run keeps the metrics of the epochs last.pt holds (a later line is from a cut-short
    epoch); a new run refuses a directory that holds a run. config.yaml is written by `setup_run`
    once the whole setup has passed (`record_run`).
    """
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EdgekdError(f"cannot write to run directory {out}: {exc.strerror or exc}") from None
    if resume_ckpt is None and (out / names.LAST_CKPT).exists():
        raise ConfigError(f"{out} already holds a run; use --resume {out} or another --out")
    history: list[dict] = []
    if resume_ckpt is not None:
        path = out / names.METRICS_FILE
        history = [r for r in read_metrics(path) if r.get("epoch", 0) <= int(resume_ckpt["epoch"])]
        write_metrics(path, history)
    return history


def restore_state(ckpt: dict, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, method: Method,
                  world: int, log: Optional[Log]) -> TrainState:
    """Load a resumed run's weights, optimizer, method state and RNG; returns its counters (`log`: rank 0's)."""
    if ckpt["model_name"] != cfg.model:
        raise CheckpointError("checkpoint model does not match the run's config")
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer"])
    method.load_state_dict(ckpt.get("method_state", {}))
    if "rng_torch" in ckpt:
        torch.set_rng_state(ckpt["rng_torch"])
    stored_world = int(ckpt.get("world_size", world))
    if log is not None and stored_world != world:
        log(f"note: resuming a run trained with {stored_world} process(es) on {world}: the global batch changes "
            f"from {cfg.batch_size * stored_world} to {cfg.batch_size * world}")
    return TrainState(epoch=int(ckpt["epoch"]), global_step=int(ckpt["global_step"]),
                      best_val_acc=float(ckpt.get("best_val_acc", -1.0)))


def _eval_loader(cfg: TrainConfig, data: ImageData, split: str, device: torch.device, rank: int, world: int,
                 channels_last: bool) -> BatchLoader:
    """This rank's batches of the `val` or `test` split, un-augmented, in order."""
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    # evaluation shards are uneven (no padding): every image counts once, as in a single process
    return BatchLoader(x, y, cfg.eval_batch_size, data.mean, data.std, train=False, device=device,
                       rank=rank, world_size=world, even_shards=False, channels_last=channels_last)


def setup_run(cfg: TrainConfig, data: Optional[ImageData], log: Log) -> tuple[Run, TrainState]:
    """Everything before the first epoch: resolved config, run directory, model, method, resume, loaders."""
    rank, world = rank_and_world()
    device = rank_device(cfg.device)
    # rank 0 reads last.pt and shares it: every rank resumes alike (and node 0 alone needs the file)
    # rank 0 also resolves the precision: every rank trains (and config.yaml records) the same one
    cfg, resume_ckpt = share_from_rank0(lambda: prepare_run(with_precision(cfg, device)))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    # `image_size` set: the fixed-size regime (edgekd.data.images; image folders read from the on-disk store)
    data = data or load_dataset(cfg.data, cfg.val_fraction, cfg.split_seed, view=View.from_config(cfg),
                                images=ImagePolicy(strict=cfg.strict_images))
    # only rank 0 touches the directory; its error stops every rank
    history = share_from_rank0(lambda: prepare_run_dir(cfg, resume_ckpt))

    student = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.input_shape[0])
    method = build_method(cfg, data, device, log)  # a teacher loads here, before the training-only parts
    channels_last = use_channels_last(cfg)
    model = build_training_model(cfg, student).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    state = TrainState()
    if resume_ckpt is not None:
        state = restore_state(resume_ckpt, cfg, model, optimizer, method, world, log if rank == 0 else None)
    step_module: nn.Module = _StepModule(model, method)
    if world > 1:  # after the resume: DDP starts from rank 0's (restored) weights
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.find_unused_parameters)

    train_loader = method.make_train_loader(rank=rank, world_size=world, channels_last=channels_last)
    val_loader = _eval_loader(cfg, data, "val", device, rank, world, channels_last) if len(data.y_val) else None
    steps_per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
    if steps_per_epoch == 0:
        raise ConfigError(f"batch size {cfg.batch_size} x {world} process(es) exceeds the "
                          f"{len(data.y_train)} training images")
    run = Run(cfg=cfg, data=data, device=device, rank=rank, world=world, log=log, out=Path(cfg.out), model=model,
              method=method, optimizer=optimizer, step_module=step_module, train_loader=train_loader,
              val_loader=val_loader, channels_last=channels_last, steps_per_epoch=steps_per_epoch, history=history,
              scaler=make_grad_scaler(cfg.precision, device))
    if run.scaler is not None and resume_ckpt is not None and resume_ckpt.get("grad_scaler"):
        run.scaler.load_state_dict(resume_ckpt["grad_scaler"])
    share_from_rank0(lambda: record_run(cfg, data, log))  # only now: a refused run writes nothing
    if rank == 0:
        log(f"edgekd train: {cfg.model} ({cfg.method}) on {data.spec}: {len(data.y_train)} train / "
            f"{len(data.y_val)} val / {len(data.y_test)} test images, {data.num_classes} classes, device {device} "
            f"({cfg.precision}), "
            f"batch {cfg.batch_size} x {world} process(es) = global batch {cfg.batch_size * world}")
    return run, state


# ---------------------------------------------------------------- one epoch

def train_steps(run: Run, state: TrainState, epoch: int) -> tuple[dict[str, float], float, float]:
    """This rank's optimizer steps of `epoch`; returns (sums n/loss_sum/correct, last lr, seconds)."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    model.train()
    run.train_loader.set_epoch(epoch)
    t0 = time.perf_counter()
    sums = {"n": 0.0, "loss_sum": 0.0, "correct": 0.0}
    total_steps = run.steps_per_epoch * cfg.epochs
    lr = optimizer.param_groups[0]["lr"]
    progress = run.progress or RunProgress(total_steps, state.global_step, enabled=False)
    progress.set_epoch(epoch + 1, cfg.epochs)
    for i, batch in enumerate(run.train_loader):
        if i >= run.steps_per_epoch:
            break
        lr = lr_at(cfg, state.global_step, total_steps, run.steps_per_epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        with autocast(cfg.precision, run.device):  # the forward only; every loss computes in float32
            loss, logits = run.step_module(batch, epoch)
        if not torch.isfinite(loss):
            last = run.out / names.LAST_CKPT
            kept = f"; last good checkpoint kept at {last}" if last.exists() else ""
            raise EdgekdError(f"loss became {float(loss)} at epoch {epoch + 1}, step {i + 1}; "
                              f"lower --lr or check the data{kept}")
        optimizer.zero_grad(set_to_none=True)
        if run.scaler is None:
            run.method.backward(loss)
            optimizer.step()
        else:  # fp16: scaled backward; the step is skipped (and the scale lowered) on inf/NaN gradients
            run.method.backward(run.scaler.scale(loss), scale=run.scaler.get_scale())
            run.scaler.step(optimizer)
            run.scaler.update()
        state.global_step += 1
        n = len(batch.y)
        sums["n"] += n
        sums["loss_sum"] += float(loss.detach()) * n
        sums["correct"] += float((logits.detach().argmax(1) == batch.y).sum())
        progress.update(state.global_step, _running(sums, time.perf_counter() - t0))
    run.method.on_epoch_end(model, epoch)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return sums, lr, time.perf_counter() - t0


def _running(sums: dict[str, float], elapsed: float) -> str:
    """The epoch so far, for the progress display: running loss, accuracy and throughput."""
    n = max(sums["n"], 1)
    return (f"loss {sums['loss_sum'] / n:.4f} acc {100 * sums['correct'] / n:.1f}% "
            f"{sums['n'] / max(elapsed, 1e-9):.0f} img/s")


def _payload(run: Run, state: TrainState, val_acc: float, record: dict) -> dict:
    payload = build_payload(run.cfg, run.model, run.data, epoch=state.epoch, global_step=state.global_step,
                            best_val_acc=state.best_val_acc, val_acc=val_acc, metrics=record,
                            optimizer_state=run.optimizer.state_dict(), method_state=run.method.state_dict(),
                            world_size=run.world)
    if run.scaler is not None:  # fp16: the loss scale a resume continues from
        payload["grad_scaler"] = run.scaler.state_dict()
    return payload


def run_epoch(run: Run, state: TrainState, epoch: int) -> dict:
    """Train `epoch` (0-based), validate, and (rank 0) write metrics and checkpoints; returns its record."""
    sums, lr, seconds = train_steps(run, state, epoch)
    sums = all_reduce_sums(sums, run.device)
    n = max(sums["n"], 1)
    record = {"epoch": epoch + 1, "lr": round(lr, 6), "train_loss": round(sums["loss_sum"] / n, 5),
              "train_acc": round(100.0 * sums["correct"] / n, 3), "img_per_s": round(sums["n"] / seconds, 1),
              "epoch_time_s": round(seconds, 2)}
    broadcast_state_from_rank0(run.model, buffers_only=True)  # BN statistics: score what rank 0 saves
    if run.val_loader is not None:
        val = all_reduce_sums(evaluate(run.model, run.val_loader, run.data.num_classes), run.device)
        record.update(summarize(val, "val"))
    val_acc = record.get("val_acc", record["train_acc"])
    improved = val_acc > state.best_val_acc
    state.best_val_acc = max(state.best_val_acc, val_acc)
    state.epoch = epoch + 1
    record["best_val_acc"] = round(state.best_val_acc, 4)
    if run.rank == 0:  # metrics first: a line past last.pt's epoch is dropped on resume
        run.history.append(record)
        write_metrics(run.out / names.METRICS_FILE, run.history)
        payload = _payload(run, state, val_acc, record)
        save_checkpoint(run.out / names.LAST_CKPT, payload)
        if improved:
            save_checkpoint(run.out / names.BEST_CKPT, payload)
        run.log(format_record(record))
    return record


# ---------------------------------------------------------------- finish

def _load_weights(model: nn.Module, path: Path) -> None:
    if path.exists():
        model.load_state_dict(load_checkpoint(path)["model_state"])


def save_finished_best(run: Run, train_end: dict) -> None:
    """best.pt with the model as the method left it after training, plus its record (rank 0).

    The training progress (epoch, optimizer, RNG, metrics) stays the best epoch's; only the
    weights and `train_end` are new.
    """
    path = run.out / names.BEST_CKPT
    best = load_checkpoint(path)
    save_checkpoint(path, build_payload(run.cfg, run.model, run.data, **training_state(best), train_end=train_end))


SUMMARY_SCHEMA, SUMMARY_SCHEMA_VERSION = "edgekd-run-summary", 1


def best_epoch_of(history: list[dict]) -> Optional[int]:
    """The epoch best.pt holds: the first one at the best validation (else training) top-1, as run_epoch decides."""
    best, epoch = -1.0, None
    for r in history:
        acc = r.get("val_acc", r.get("train_acc", -1.0))
        if acc > best:
            best, epoch = acc, r.get("epoch")
    return epoch


def finish_run(run: Run, state: TrainState) -> RunResult:
    """Evaluate (and let the method finalise) the best checkpoint; write summary.json; returns the result."""
    cfg, model, data = run.cfg, run.model, run.data
    best_path = run.out / names.BEST_CKPT
    share_from_rank0(lambda: _load_weights(model, best_path))  # waits for rank 0's writes; no shared filesystem
    broadcast_state_from_rank0(model)
    # e.g. DHO's mix search on validation: it changes the model and returns its evidence
    train_end = run.method.on_train_end(model, run.val_loader)
    if train_end is not None:
        broadcast_state_from_rank0(model, buffers_only=True)  # evaluate what rank 0 saves
    test_loader = _eval_loader(cfg, data, "test", run.device, run.rank, run.world, run.channels_last)
    test = summarize(all_reduce_sums(evaluate(model, test_loader, data.num_classes), run.device), "test")
    best_epoch = best_epoch_of(run.history)
    summary = {"schema": SUMMARY_SCHEMA, "schema_version": SUMMARY_SCHEMA_VERSION,  # docs/schemas.md
               "model": cfg.model, "method": cfg.method, "data": data.spec, "epochs": cfg.epochs,
               "best_epoch": best_epoch, "best_val_acc": round(state.best_val_acc, 4), **test,
               "train_time_s": round(time.perf_counter() - run.started, 2), "batch_size": cfg.batch_size,
               "world_size": run.world, "global_batch": cfg.batch_size * run.world, "precision": cfg.precision,
               **(train_end or {})}
    if run.rank == 0:
        if train_end is not None and best_path.exists():
            save_finished_best(run, train_end)
        write_json_atomic(run.out / names.SUMMARY_FILE, summary)
        at = f" (epoch {best_epoch})" if best_epoch else ""
        run.log(f"done: best val {state.best_val_acc:.2f}%{at}, test top-1 {test['test_acc']:.2f}%, "
                f"total time {format_duration(summary['train_time_s'])} -> {best_path}")
    return RunResult(run.out, state.best_val_acc, test["test_acc"], cfg.epochs, summary)


def claim_run_dir(held: ExitStack, out: str, log: Log) -> None:
    """Lock the run directory until `held` closes and remove temp files of killed writers (rank 0).

    A second run into the directory is refused in one line naming this one; a killed run's lock
    is taken over (edgekd.lock). Its temp files (`.last.pt.<pid>@<host>.*.tmp`) go (edgekd.io).
    """
    held.enter_context(run_lock(out, log=log))
    remove_stale(out)


def record_run(cfg: TrainConfig, data: ImageData, log: Log) -> None:
    """Write config.yaml and the skipped-images list once setup has passed (rank 0).

    Not earlier: a run refused at setup (batch larger than the data, a teacher that does not load)
    leaves no file in a new --out (the lock removes the directory it created), and a refused
    `--resume RUN --batch-size ...` does not overwrite RUN/config.yaml, which the next resume reads.
    """
    save_config(cfg, Path(cfg.out) / names.CONFIG_FILE)
    note_skipped(data, cfg.out, log)


def note_skipped(data: ImageData, out: str, log: Log) -> None:
    """List the unreadable images the reader left out in the run directory, and say so (rank 0)."""
    from edgekd.data.readers import write_skipped

    listed = write_skipped(data.skipped, out)
    if listed is not None:
        log(f"warning: skipped {len(data.skipped)} unreadable image(s), listed in {listed}")


def train(cfg: TrainConfig, data: Optional[ImageData] = None, log: Log = print) -> RunResult:
    """Train a student as configured; write config, metrics, checkpoints and summary to `cfg.out`."""
    started = time.perf_counter()
    with ExitStack() as held:
        # rank 0 holds the run directory for the whole run; a refusal stops every rank
        share_from_rank0(lambda: claim_run_dir(held, cfg.resume or cfg.out, log))
        run, state = setup_run(cfg, data, log)
        run.started = started
        run.progress = RunProgress(run.steps_per_epoch * run.cfg.epochs, state.global_step,
                                   enabled=run.cfg.progress and run.rank == 0, log=log)
        try:
            for epoch in range(state.epoch, run.cfg.epochs):
                run_epoch(run, state, epoch)
        finally:
            run.progress.close()
        return finish_run(run, state)
