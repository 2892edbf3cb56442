"""Thin typer commands: each builds a config and calls a library function.

Exit codes (DESIGN.md section 2): 0 ok, 1 user error (`error: ...`, no traceback), 2 usage
error, 3 a gate failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.errors import EdgekdError, GateError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="edgekd: distil, export, verify and benchmark compact image classifiers for edge devices.")


def _fail(exc: BaseException, code: int) -> None:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def run_guarded(fn, *args, **kwargs):
    """Call a library function, mapping edgekd errors to exit codes 1 and 3."""
    try:
        return fn(*args, **kwargs)
    except GateError as exc:
        _fail(exc, 3)
    except EdgekdError as exc:
        _fail(exc, 1)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130)


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run config; options below override it."),
    data: Optional[str] = typer.Option(None, help="Data spec: synthetic, npz:PATH, imagefolder:PATH, cifar:PATH, mnist:PATH."),
    model: Optional[str] = typer.Option(None, help="Zoo model name (see `edgekd info --zoo`)."),
    method: Optional[str] = typer.Option(None, help="ce | kd | pskd | lsskd | dho."),
    teacher: Optional[str] = typer.Option(None, help="Teacher: edgekd checkpoint, TorchScript, ONNX or logits file."),
    epochs: Optional[int] = typer.Option(None, help="Epochs to train."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adamw."),
    schedule: Optional[str] = typer.Option(None, help="cosine | step | constant."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up length in epochs."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (not applied to BN and biases)."),
    out: Optional[str] = typer.Option(None, help="Run directory."),
    resume: Optional[str] = typer.Option(None, help="Resume the run in this directory from its last.pt."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads."),
    labeled_fraction: Optional[float] = typer.Option(None, help="DHO: fraction of train labels kept."),
    labeled_per_class: Optional[int] = typer.Option(None, help="DHO: labeled images per class."),
    nproc_per_node: Optional[int] = typer.Option(None, help="Launch N processes with torch.distributed (DDP)."),
    set_: List[str] = typer.Option([], "--set", help="Any config key, dotted: --set lsskd.branch=light."),
    progress: bool = typer.Option(True, help="Show a progress bar on a terminal."),
) -> None:
    """Train a student (CE, KD, PS-KD, LSSKD or DHO); writes config.yaml, metrics.jsonl, last.pt, best.pt."""
    from edgekd.config import build_config, dotted_to_nested, parse_set_options

    def build():
        overrides = dict(data=data, model=model, method=method, teacher=teacher, epochs=epochs, batch_size=batch_size,
                         lr=lr, optimizer=optimizer, schedule=schedule, warmup_epochs=warmup_epochs,
                         weight_decay=weight_decay, out=out, resume=resume, device=device, seed=seed,
                         threads=threads, progress=progress)
        overrides = _merge(overrides, dotted_to_nested({"dho.labeled_fraction": labeled_fraction,
                                                        "dho.labeled_per_class": labeled_per_class}))
        overrides = _merge(overrides, parse_set_options(set_))
        return build_config(str(config) if config else None, overrides)

    cfg = run_guarded(build)
    if nproc_per_node and nproc_per_node > 1:
        from edgekd.train.distributed import launch

        code = run_guarded(launch, nproc_per_node, sys.argv[1:])
        raise typer.Exit(code)
    from edgekd.train.distributed import train_entry

    run_guarded(train_entry, cfg)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@app.command()
def info(
    ckpt: Optional[Path] = typer.Argument(None, help="An edgekd checkpoint (.pt) or run directory."),
    zoo: bool = typer.Option(False, "--zoo", help="List the model zoo with params and FLOPs (MACs)."),
) -> None:
    """Describe a checkpoint (model, data, epochs, accuracy, params, FLOPs) or the model zoo."""
    from edgekd.report import describe_checkpoint, zoo_table

    if zoo or ckpt is None:
        typer.echo(zoo_table())
        return
    typer.echo(run_guarded(describe_checkpoint, ckpt))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Directory for every artifact of the demo."),
    quick: bool = typer.Option(False, help="A reduced budget (seconds) for tests and smoke runs."),
) -> None:
    """Run the whole pipeline on the embedded synthetic dataset: train, and every later stage that exists."""
    from edgekd.demo import run_demo

    run_guarded(run_demo, out, quick=quick, log=typer.echo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
