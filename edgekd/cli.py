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
    nproc_per_node: Optional[int] = typer.Option(None, help="Launch N processes with torch.distributed (DDP); see docs/distributed.md.", rich_help_panel="Distributed"),
    nnodes: Optional[str] = typer.Option(None, help="torchrun --nnodes: number of nodes, or MIN:MAX.", rich_help_panel="Distributed"),
    node_rank: Optional[int] = typer.Option(None, help="torchrun --node-rank (static rendezvous).", rich_help_panel="Distributed"),
    master_addr: Optional[str] = typer.Option(None, help="torchrun --master-addr: address of node 0.", rich_help_panel="Distributed"),
    master_port: Optional[int] = typer.Option(None, help="torchrun --master-port on node 0.", rich_help_panel="Distributed"),
    rdzv_backend: Optional[str] = typer.Option(None, help="torchrun --rdzv-backend: static | c10d.", rich_help_panel="Distributed"),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="torchrun --rdzv-endpoint HOST:PORT.", rich_help_panel="Distributed"),
    rdzv_id: Optional[str] = typer.Option(None, help="torchrun --rdzv-id: the job id, same on every node.", rich_help_panel="Distributed"),
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
    rendezvous = dict(nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
                      rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)
    if nproc_per_node is not None and (nproc_per_node != 1 or any(v is not None for v in rendezvous.values())):
        from edgekd.train.distributed import launch

        raise typer.Exit(run_guarded(launch, nproc_per_node, cfg, rendezvous))
    if any(v is not None for v in rendezvous.values()):
        raise typer.BadParameter("rendezvous options (--nnodes, --master-addr, ...) need --nproc-per-node")
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


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="An edgekd checkpoint (.pt) or run directory."),
    out: Path = typer.Option(..., "--out", help="Output directory (model.onnx, manifest.json, ...)."),
    format: str = typer.Option("onnx", "--format", help="onnx | tensorrt."),
    fold: Optional[str] = typer.Option(None, help="Dual-head (DHO) fold: exact | logit | ce | kd (default exact)."),
    opset: int = typer.Option(17, help="ONNX opset (17 suits TensorRT 8.5 / JetPack 5; >= 18 uses the dynamo exporter)."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (static QDQ, per-channel weights)."),
    int8_target: Optional[str] = typer.Option(None, help="INT8 flavour: cpu (U8S8) | tensorrt (S8S8); default from --format/--target."),
    calib_size: int = typer.Option(500, help="INT8 calibration images from the training split."),
    calib_method: str = typer.Option("minmax", help="INT8 calibration: minmax | entropy | percentile."),
    max_accuracy_drop: float = typer.Option(1.0, help="INT8 (and logit fold) budget: max top-1 drop in points on validation."),
    keep_float_layers: bool = typer.Option(False, help="INT8: keep the first conv and the last Gemm in float."),
    min_agreement: float = typer.Option(99.0, help="Logit fold: min top-1 agreement with the exact mix, percent."),
    target: str = typer.Option("cpu", help="cpu | jetson (jetson writes a build kit for the device)."),
    precision: str = typer.Option("fp32", help="TensorRT precision: fp32 | fp16 | int8."),
    min_batch: int = typer.Option(1, "--min-batch", help="TensorRT profile: smallest batch."),
    opt_batch: int = typer.Option(8, "--opt-batch", help="TensorRT profile: batch to optimise for."),
    max_batch: int = typer.Option(64, "--max-batch", help="TensorRT profile: largest batch."),
    workspace_mb: int = typer.Option(1024, help="TensorRT builder workspace (MiB)."),
    timing_cache: Optional[str] = typer.Option(None, help="TensorRT timing cache file (read and updated)."),
    dla_core: Optional[int] = typer.Option(None, help="Jetson: DLA core to build for."),
    data: Optional[str] = typer.Option(None, help="Data spec to verify on, if the checkpoint's has moved."),
) -> None:
    """Surgery + verified ONNX export (+ INT8 QDQ, TensorRT engine or Jetson build kit) with a manifest."""
    from edgekd.export.pipeline import ExportOptions, run_export

    opts = ExportOptions(
        ckpt=str(ckpt), out=str(out), format=format, fold=fold, opset=opset, int8=int8, int8_target=int8_target,
        calib_size=calib_size, calib_method=calib_method, max_accuracy_drop=max_accuracy_drop,
        keep_float_layers=keep_float_layers, min_agreement=min_agreement, target=target, precision=precision,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_mb=workspace_mb,
        timing_cache=timing_cache, dla_core=dla_core, data=data)
    run_guarded(run_export, opts, log=typer.echo)


@app.command(no_args_is_help=True)
def bench(
    models: List[str] = typer.Argument(..., metavar="MODEL... | compare A B",
                                       help="Checkpoints (.pt or run dir), ONNX files, TensorRT engines; or `compare A B`."),
    backend: Optional[str] = typer.Option(None, help="torch | ort | trt (default from the suffix: .pt, .onnx, .engine/.plan)."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    providers: Optional[str] = typer.Option(None, help="ONNX Runtime providers, comma-separated: cpu, cuda, tensorrt."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads (torch and ONNX Runtime)."),
    batch_sizes: str = typer.Option("1,8,32", help="Batch sizes to time, comma-separated (compare uses the first)."),
    data: Optional[str] = typer.Option(None, help="Data spec for top-1/top-5 (test split), e.g. imagefolder:PATH."),
    reference: Optional[str] = typer.Option(None, help="Reference model (checkpoint or ONNX) for parity."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report here."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a markdown report here."),
    baseline: Optional[Path] = typer.Option(None, help="A previous --json report to gate against (exit 3 on regression)."),
    max_latency_regression: str = typer.Option("10%", help="Allowed p50 slowdown vs --baseline, or B vs A in compare."),
    max_accuracy_drop: float = typer.Option(0.5, help="Allowed top-1 drop vs --baseline, in points."),
    warmup: int = typer.Option(10, help="Warm-up calls (and at least 0.2 s) before timing."),
    min_time: float = typer.Option(1.0, help="Timed seconds per model and batch size, at least."),
    min_iters: int = typer.Option(20, help="Timed calls per model and batch size, at least."),
    torch_mode: str = typer.Option("eager", help="Torch runner: eager | compile | cudagraph (CUDA)."),
    rounds: int = typer.Option(30, help="compare: interleaved A/B rounds."),
    compare_time: float = typer.Option(2.0, help="compare: timed seconds in all, both sides together."),
    confidence: float = typer.Option(0.95, help="compare: confidence level of the latency-ratio interval."),
    allow_slow_int8: bool = typer.Option(False, help="Report an INT8 model slower than its FP32 source as a warning, not a failure."),
) -> None:
    """Latency, accuracy and parity of models side by side; gate CI with --baseline or `bench compare A B`."""
    from edgekd.bench.gate import parse_percent
    from edgekd.bench.latency import LatencySettings
    from edgekd.bench.report import render_table
    from edgekd.bench.suite import BenchOptions, parse_batch_sizes, raise_on_failures, run_bench, run_compare

    def build() -> BenchOptions:
        return BenchOptions(
            models=tuple(models), backend=backend, device=device,
            providers=tuple(p for p in providers.split(",") if p.strip()) if providers else None,
            threads=threads, batch_sizes=parse_batch_sizes(batch_sizes), data=data, reference=reference,
            json_path=json_out, markdown_path=markdown, baseline=baseline,
            max_latency_regression=parse_percent(max_latency_regression), max_accuracy_drop=max_accuracy_drop,
            latency=LatencySettings(warmup_iters=warmup, min_time_s=min_time, min_iters=min_iters),
            torch_mode=torch_mode, allow_slow_int8=allow_slow_int8)

    opts = run_guarded(build)
    log = lambda s: typer.echo(s, err=True)  # noqa: E731 - progress on stderr keeps stdout for the table
    if models[0] == "compare" and not Path("compare").exists():
        if len(models) != 3:
            _fail(EdgekdError("usage: edgekd bench compare A B (exactly two models)"), 1)
        res = run_guarded(run_compare, models[1], models[2], opts, rounds=rounds, time_s=compare_time,
                          confidence=confidence, log=log)
        typer.echo(res["summary"])
        if not res["passed"]:
            _fail(GateError(f"latency regression: {res['summary']}"), 3)
        return
    report = run_guarded(run_bench, opts, log=log)
    typer.echo(render_table(report))
    for w in report["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    run_guarded(raise_on_failures, report, allow_slow_int8)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
