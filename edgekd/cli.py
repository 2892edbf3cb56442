"""Thin typer commands: each builds a config and calls a library function.

Exit codes (docs/architecture.md, "Exit codes"): 0 ok; 1 user error (`error: ...`, one line, no
traceback); 2 usage error (typer/click); 3 a gate failed; 4 `bench compare --fail-on-inconclusive`
could not decide. The code of a failure comes from the
exception's class (`edgekd.errors.exit_code_of`), its message from `edgekd.errors.first_line`.

Option defaults live in one place each: `TrainConfig`, `ExportOptions`, `BenchOptions` (with
`LatencySettings`) and `CompareSettings`. Every option here defaults to None, only the options
given are passed on, and the help text reads the defaults from those dataclasses' fields.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from edgekd.bench.gate import CompareSettings
from edgekd.bench.latency import LatencySettings
from edgekd.bench.suite import BenchOptions
from edgekd.cli_help import hide_flag_types, print_version
from edgekd.errors import EdgekdError, GateError, exit_code_of, first_line
from edgekd.export.options import ExportOptions

T = TypeVar("T")

# An `error: ...` line is cut here: long enough for two paths and a reason, short enough for a terminal.
MESSAGE_LIMIT = 1000

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="edgekd: distil, export, verify and benchmark compact image classifiers for edge devices.")
hide_flag_types()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                       help="Print the edgekd version and exit.")) -> None:
    """edgekd: distil, export, verify and benchmark compact image classifiers for edge devices."""


def fail(exc: BaseException) -> NoReturn:
    """Print `error: <first line>` on stderr and exit with the code of the exception's class."""
    typer.echo(f"error: {first_line(exc, MESSAGE_LIMIT)}", err=True)
    raise typer.Exit(exit_code_of(exc))


def run_guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a library function; edgekd errors become one line and their exit code (1 user error, 3 gate)."""
    try:
        return fn(*args, **kwargs)
    except (EdgekdError, GateError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None


def field_defaults(cls: type) -> dict[str, Any]:
    """A dataclass's defaults by field name (factories called): the one source of the help's defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None), as keyword arguments for an options dataclass."""
    return {k: v for k, v in options.items() if v is not None}


def with_default(text: str, value: Any) -> str:
    """Help text ending in its default: 'cpu | cuda (default: cpu).' ("[...]" would be rich markup)."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    return f"{text.rstrip('.')} (default: {value})."


# ------------------------------------------------------------------------------------------ train


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run config; options below override it."),
    data: Optional[str] = typer.Option(
        None, help="Data spec: synthetic, npz:PATH, imagefolder:PATH, cifar:PATH, mnist:PATH, store:PATH."),
    model: Optional[str] = typer.Option(None, help="Zoo model name (see `edgekd info --zoo`)."),
    method: Optional[str] = typer.Option(None, help="ce | kd | pskd | lsskd | dho | dhkd."),
    teacher: Optional[str] = typer.Option(
        None, help="Teacher: edgekd checkpoint, TorchScript, ONNX, logits file, or zeroshot:ENCODER.onnx,TEXT.npz."),
    epochs: Optional[int] = typer.Option(None, help="Epochs to train."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adamw."),
    schedule: Optional[str] = typer.Option(None, help="cosine | step | constant."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up length in epochs."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (not applied to BN and biases)."),
    out: Optional[str] = typer.Option(None, help="Run directory."),
    resume: Optional[str] = typer.Option(
        None, help="Resume the run in this directory from its last.pt; its config.yaml is the base that "
                   "--config and the options given here override."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    image_size: Optional[int] = typer.Option(
        None, help="Train and export at N x N px: images kept as N/0.875-px squares (image folders in an on-disk "
                   "store), random-resized crops for training, the centre crop for evaluation and the runtime."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads."),
    precision: Optional[str] = typer.Option(
        None, help="fp32 | bf16 | fp16 (CUDA) | auto: bf16 autocast on CPUs with AMX/AVX-512-BF16 and on bf16 "
                   "GPUs, else fp32 (default auto; config.yaml records the choice)."),
    labeled_fraction: Optional[float] = typer.Option(None, help="DHO: fraction of train labels kept."),
    labeled_per_class: Optional[int] = typer.Option(None, help="DHO: labeled images per class."),
    nproc_per_node: Optional[int] = typer.Option(
        None, help="Launch N processes with torch.distributed (DDP); see docs/distributed.md.",
        rich_help_panel="Distributed"),
    nnodes: Optional[str] = typer.Option(
        None, help="torchrun --nnodes: number of nodes, or MIN:MAX.", rich_help_panel="Distributed"),
    node_rank: Optional[int] = typer.Option(
        None, help="torchrun --node-rank (static rendezvous).", rich_help_panel="Distributed"),
    master_addr: Optional[str] = typer.Option(
        None, help="torchrun --master-addr: address of node 0.", rich_help_panel="Distributed"),
    master_port: Optional[int] = typer.Option(
        None, help="torchrun --master-port on node 0.", rich_help_panel="Distributed"),
    rdzv_backend: Optional[str] = typer.Option(
        None, help="torchrun --rdzv-backend: static | c10d.", rich_help_panel="Distributed"),
    rdzv_endpoint: Optional[str] = typer.Option(
        None, help="torchrun --rdzv-endpoint HOST:PORT.", rich_help_panel="Distributed"),
    rdzv_id: Optional[str] = typer.Option(
        None, help="torchrun --rdzv-id: the job id, same on every node.", rich_help_panel="Distributed"),
    set_: List[str] = typer.Option([], "--set", help="Any config key, dotted: --set lsskd.branch=light."),
    progress: bool = typer.Option(True, help="Show a progress bar on a terminal."),
    strict_images: Optional[bool] = typer.Option(None, "--strict-images/--skip-bad-images", help="Image folders: "
        "refuse the first unreadable image (default: skip and list them in RUN/skipped_images.txt, up to 1%)."),
) -> None:
    """Train a student (CE, KD, PS-KD, LSSKD, DHO or DHKD); writes config.yaml, metrics.jsonl, last.pt, best.pt."""
    from edgekd.config import build_config, dotted_to_nested, merge_nested, parse_set_options

    def build():
        overrides = dict(data=data, model=model, method=method, teacher=teacher, epochs=epochs, batch_size=batch_size,
                         lr=lr, optimizer=optimizer, schedule=schedule, warmup_epochs=warmup_epochs,
                         image_size=image_size, weight_decay=weight_decay, out=out, resume=resume, device=device,
                         seed=seed, threads=threads, precision=precision, progress=progress,
                         strict_images=strict_images)
        overrides = merge_nested(overrides, dotted_to_nested({"dho.labeled_fraction": labeled_fraction,
                                                              "dho.labeled_per_class": labeled_per_class}))
        overrides = merge_nested(overrides, parse_set_options(set_))
        return build_config(str(config) if config else None, overrides)

    cfg = run_guarded(build)
    rendezvous = dict(nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
                      rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)
    if nproc_per_node is not None and (nproc_per_node != 1 or any(v is not None for v in rendezvous.values())):
        from edgekd.train.distributed import launch

        code = run_guarded(launch, nproc_per_node, cfg, rendezvous)
        if code == 0 and not node_rank:  # the run directory is node 0's
            _plot_run(cfg.out)
        raise typer.Exit(code)
    if any(v is not None for v in rendezvous.values()):
        raise typer.BadParameter("rendezvous options (--nnodes, --master-addr, ...) need --nproc-per-node")
    from edgekd.train.distributed import train_entry

    run_guarded(train_entry, cfg)
    _plot_run(cfg.out)


def _plot_run(run_dir: str) -> None:
    """curves.png (and a DHO run's dho_surface.png) when the [plot] extra is installed; silent without it."""
    from edgekd.plots import plot_run_quietly

    plot_run_quietly(run_dir, log=typer.echo)


@app.command()
def plot(
    path: Path = typer.Argument(..., help="A run directory, or a bench --json report."),
) -> None:
    """Draw a run's training curves, or a bench report's latency and accuracy-vs-latency charts.

    A run directory gives curves.png (loss, top-1 of every head, learning rate, img/s per epoch)
    and, for DHO, dho_surface.png; a bench JSON report gives NAME.latency.png and
    NAME.accuracy-latency.png beside it. Needs matplotlib (the plot extra).
    """
    from edgekd.plots import plot_path

    for written in run_guarded(plot_path, path, log=_progress):
        typer.echo(str(written))


# ------------------------------------------------------------------------------------ info, demo


@app.command()
def info(
    ckpt: Optional[Path] = typer.Argument(None, help="An edgekd checkpoint (.pt) or run directory."),
    zoo: bool = typer.Option(False, "--zoo", help="List the model zoo with params and FLOPs (MACs)."),
) -> None:
    """Describe a checkpoint (model, data, epochs, accuracy, params, FLOPs) or the model zoo."""
    from edgekd.info import describe_checkpoint, zoo_table

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


# ----------------------------------------------------------------------------------------- export

_E = field_defaults(ExportOptions)


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="An edgekd checkpoint (.pt) or run directory."),
    out: Path = typer.Option(..., "--out", help="Output directory (model.onnx, manifest.json, ...)."),
    format: Optional[str] = typer.Option(
        None, "--format", help=with_default("onnx | tensorrt | openvino (IR beside the ONNX).", _E["format"])),
    fold: Optional[str] = typer.Option(None, help="Dual-head (DHO) fold: exact | logit | ce | kd (default exact)."),
    opset: Optional[int] = typer.Option(
        None, help=with_default("ONNX opset (17 suits TensorRT 8.5 / JetPack 5; >= 18 uses the dynamo exporter).",
                                _E["opset"])),
    int8: Optional[bool] = typer.Option(
        None, "--int8", help=with_default("Also write model.int8.onnx (static QDQ, per-channel weights).",
                                          _E["int8"])),
    fp16: Optional[bool] = typer.Option(
        None, "--fp16", help=with_default("Also write model.fp16.onnx (FP16, FP32 I/O; always for --precision fp16).",
                                          _E["fp16"])),
    int8_target: Optional[str] = typer.Option(
        None, help="INT8 flavour: cpu (U8S8) | tensorrt (S8S8); default from --format/--target."),
    calib_size: Optional[int] = typer.Option(
        None, help=with_default("INT8 calibration images from the training split.", _E["calib_size"])),
    calib_method: Optional[str] = typer.Option(
        None, help=with_default("INT8 calibration: minmax | entropy | percentile.", _E["calib_method"])),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help=with_default("INT8 (and logit fold) budget: max top-1 drop in points on validation.",
                                _E["max_accuracy_drop"])),
    keep_float_layers: Optional[bool] = typer.Option(
        None, help=with_default("INT8: keep the first conv and the last Gemm in float.", _E["keep_float_layers"])),
    min_agreement: Optional[float] = typer.Option(
        None, help=with_default("Logit fold: min top-1 agreement with the exact mix, percent.", _E["min_agreement"])),
    target: Optional[str] = typer.Option(
        None, help=with_default("cpu | jetson (jetson writes a build kit for the device).", _E["target"])),
    precision: Optional[str] = typer.Option(
        None, help=with_default("TensorRT precision: fp32 | fp16 | int8.", _E["precision"])),
    min_batch: Optional[int] = typer.Option(
        None, "--min-batch", help=with_default("TensorRT profile: smallest batch.", _E["min_batch"])),
    opt_batch: Optional[int] = typer.Option(
        None, "--opt-batch", help=with_default("TensorRT profile: batch to optimise for.", _E["opt_batch"])),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", help=with_default("TensorRT profile: largest batch.", _E["max_batch"])),
    workspace_mb: Optional[int] = typer.Option(
        None, help=with_default("TensorRT builder workspace (MiB).", _E["workspace_mb"])),
    timing_cache: Optional[str] = typer.Option(None, help="TensorRT timing cache file (read and updated)."),
    dla_core: Optional[int] = typer.Option(None, help="Jetson: DLA core to build for."),
    jetpack: Optional[str] = typer.Option(
        None, help=with_default("Jetson kit: 5 (TensorRT 8.5, --fp16/--int8), 6.0 (8.6) or 6 (6.1/6.2: TensorRT 10.3, "
                                "--stronglyTyped).", _E["jetpack"])),
    data: Optional[str] = typer.Option(None, help="Data spec to verify on, if the checkpoint's has moved."),
) -> None:
    """Surgery + verified ONNX export (+ INT8 QDQ, TensorRT engine or Jetson build kit) with a manifest."""
    from edgekd.export.pipeline import run_export

    opts = ExportOptions(ckpt=str(ckpt), out=str(out), **given(
        format=format, fold=fold, opset=opset, int8=int8, fp16=fp16, int8_target=int8_target, calib_size=calib_size,
        calib_method=calib_method, max_accuracy_drop=max_accuracy_drop, keep_float_layers=keep_float_layers,
        min_agreement=min_agreement, target=target, precision=precision, min_batch=min_batch, opt_batch=opt_batch,
        max_batch=max_batch, workspace_mb=workspace_mb, timing_cache=timing_cache, dla_core=dla_core,
        jetpack=jetpack, data=data))
    run_guarded(run_export, opts, log=typer.echo)


# ------------------------------------------------------------------------------------------ bench
#
# `edgekd bench MODEL...` and `edgekd bench compare A B` share one group: a first word that is not
# `compare` (or is, but names an existing file, as before the sub-command existed) runs the hidden
# default command, so every earlier `edgekd bench ...` line works unchanged and `compare`'s usage
# errors are click's (exit 2).

_B = field_defaults(BenchOptions)
_L = field_defaults(LatencySettings)
_C = field_defaults(CompareSettings)
BENCH_DEFAULT = "run"
COMPARE = "compare"


class BenchGroup(TyperGroup):
    """Routes `bench compare ...` to the sub-command and everything else to the default command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not (args and args[0] == COMPARE and not Path(COMPARE).exists()):
            args = [BENCH_DEFAULT, *args]
        return super().parse_args(ctx, args)


class _DefaultContext(typer.Context):
    @property
    def command_path(self) -> str:  # `edgekd bench [OPTIONS] MODEL...`, not `edgekd bench run ...`
        return self.parent.command_path if self.parent is not None else super().command_path


class DefaultCommand(TyperCommand):
    context_class = _DefaultContext


bench_app = typer.Typer(cls=BenchGroup, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(bench_app, name="bench", help="Latency, accuracy and parity of models side by side; gate CI with "
                                            "--baseline or `edgekd bench compare A B`.")

_BACKEND = typer.Option(
    None, help="torch | ort | trt | openvino, or a comma list (ort,openvino: every ONNX model on each) "
               "(default from the suffix: .pt, .onnx, .engine/.plan, .xml).")
_DEVICE = typer.Option(None, help=with_default("cpu | cuda.", _B["device"]))
_PROVIDERS = typer.Option(None, help="ONNX Runtime providers, comma-separated: cpu, cuda, tensorrt.")
_THREADS = typer.Option(None, help="Intra-op threads (torch and ONNX Runtime).")
_JSON = typer.Option(None, "--json", help="Write the JSON report here.")
_REGRESSION = typer.Option(None, help=with_default("Allowed p50 slowdown vs --baseline, or B vs A in compare.",
                                                   f"{_B['max_latency_regression']:.0%}"))
_WARMUP = typer.Option(None, help=with_default(f"Warm-up calls (and at least {_L['warmup_time_s']} s) before timing.",
                                               _L["warmup_iters"]))
_TORCH_MODE = typer.Option(None, help=with_default("Torch runner: eager | compile | cudagraph (CUDA).",
                                                   _B["torch_mode"]))


def bench_options(models: tuple[str, ...], *, backend: Optional[str], device: Optional[str],
                  providers: Optional[str], threads: Optional[int], batch_sizes: Optional[str],
                  max_latency_regression: Optional[str], warmup: Optional[int], torch_mode: Optional[str],
                  json_out: Optional[Path], min_time: Optional[float] = None, min_iters: Optional[int] = None,
                  **rest: Any) -> BenchOptions:
    """BenchOptions from the options given; the parsers raise EdgekdError (exit 1) on a bad value."""
    from edgekd.bench.gate import parse_percent
    from edgekd.bench.suite import parse_batch_sizes

    return BenchOptions(models=models, backend=backend, **given(
        device=device, providers=tuple(p for p in providers.split(",") if p.strip()) if providers else None,
        threads=threads, batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes is not None else None,
        max_latency_regression=parse_percent(max_latency_regression) if max_latency_regression is not None else None,
        latency=LatencySettings(**given(warmup_iters=warmup, min_time_s=min_time, min_iters=min_iters)),
        torch_mode=torch_mode, json_path=json_out, **rest))


def _progress(line: str) -> None:
    typer.echo(line, err=True)  # progress on stderr keeps stdout for the table


@bench_app.command(BENCH_DEFAULT, cls=DefaultCommand, hidden=True, no_args_is_help=True)
def bench(
    models: List[str] = typer.Argument(
        ..., metavar="MODEL...", help="Checkpoints (.pt or run dir), ONNX files, TensorRT engines."),
    backend: Optional[str] = _BACKEND,
    device: Optional[str] = _DEVICE,
    providers: Optional[str] = _PROVIDERS,
    threads: Optional[int] = _THREADS,
    batch_sizes: Optional[str] = typer.Option(
        None, help=with_default("Batch sizes to time, comma-separated.", _B["batch_sizes"])),
    data: Optional[str] = typer.Option(None, help="Data spec for top-1/top-5 (test split), e.g. imagefolder:PATH."),
    reference: Optional[str] = typer.Option(None, help="Reference model (checkpoint or ONNX) for parity."),
    json_out: Optional[Path] = _JSON,
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a markdown report here."),
    baseline: Optional[Path] = typer.Option(
        None, help="A previous --json report to gate against (exit 3 on regression)."),
    max_latency_regression: Optional[str] = _REGRESSION,
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help=with_default("Allowed top-1 drop vs --baseline, in points.", _B["max_accuracy_drop"])),
    warmup: Optional[int] = _WARMUP,
    min_time: Optional[float] = typer.Option(
        None, help=with_default("Timed seconds per model and batch size, at least.", _L["min_time_s"])),
    min_iters: Optional[int] = typer.Option(
        None, help=with_default("Timed calls per model and batch size, at least.", _L["min_iters"])),
    torch_mode: Optional[str] = _TORCH_MODE,
    allow_slow_int8: Optional[bool] = typer.Option(
        None, help=with_default("Report an INT8 model slower than its FP32 source as a warning, not a failure.",
                                _B["allow_slow_int8"])),
    precision_hint: Optional[str] = typer.Option(
        None, help="OpenVINO precision hint: f32 | bf16 | f32,bf16 (each); bf16 is gated like INT8 (default f32)."),
    max_precision_drop: Optional[float] = typer.Option(
        None, help=with_default("INT8/bf16 entries: max top-1 drop in points vs their FP32 reference (with --data).",
                                _B["max_precision_drop"])),
) -> None:
    """Latency, accuracy and parity of models side by side; gate CI with --baseline.

    `edgekd bench compare A B` is the interleaved A/B latency gate (see `edgekd bench compare --help`).
    """
    from edgekd.bench.recommend import render_recommendations
    from edgekd.bench.report import render_table
    from edgekd.bench.suite import raise_on_failures, run_bench

    opts = run_guarded(lambda: bench_options(
        tuple(models), backend=backend, device=device, providers=providers, threads=threads,
        batch_sizes=batch_sizes, max_latency_regression=max_latency_regression, warmup=warmup,
        torch_mode=torch_mode, json_out=json_out, min_time=min_time, min_iters=min_iters, data=data,
        reference=reference, markdown_path=markdown, baseline=baseline, max_accuracy_drop=max_accuracy_drop,
        allow_slow_int8=allow_slow_int8, precision_hint=precision_hint, max_precision_drop=max_precision_drop))
    report = run_guarded(run_bench, opts, log=_progress)
    typer.echo(render_table(report))
    for w in report["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    lines = render_recommendations(report)  # one line per device (wrapped to the terminal): what to deploy
    if lines:
        typer.echo(lines)
    run_guarded(raise_on_failures, report, opts.allow_slow_int8)


@bench_app.command(COMPARE)
def compare(
    a: str = typer.Argument(..., metavar="A", help="The baseline model (ONNX, engine or checkpoint)."),
    b: str = typer.Argument(..., metavar="B", help="The candidate model, gated against A."),
    backend: Optional[str] = _BACKEND,
    device: Optional[str] = _DEVICE,
    providers: Optional[str] = _PROVIDERS,
    threads: Optional[int] = _THREADS,
    batch_sizes: Optional[str] = typer.Option(
        None, help=with_default("Batch size to time (the first of a comma-separated list).", _B["batch_sizes"][0])),
    json_out: Optional[Path] = _JSON,
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="Write a markdown report here: both files, both p50s, B/A with its interval, "
                                 "threshold, verdict."),
    max_latency_regression: Optional[str] = _REGRESSION,
    warmup: Optional[int] = _WARMUP,
    torch_mode: Optional[str] = _TORCH_MODE,
    rounds: Optional[int] = typer.Option(None, help=with_default("Interleaved A/B rounds per process.",
                                                                  _C["rounds"])),
    compare_time: Optional[float] = typer.Option(
        None, help=with_default("Timed seconds in all, both sides and all processes together.", _C["time_s"])),
    confidence: Optional[float] = typer.Option(
        None, help=with_default("Confidence level of the latency-ratio interval.", _C["confidence"])),
    processes: Optional[int] = typer.Option(
        None, help=with_default("Fresh processes measuring A and B; the interval is over processes.",
                                _C["processes"])),
    fail_on_inconclusive: bool = typer.Option(
        False, "--fail-on-inconclusive", help="Exit 4 when the interval straddles the threshold (default: exit 0 "
                                              "with a warning)."),
) -> None:
    """Interleaved A/B latency gate: exit 3 when the whole confidence interval of B/A lies above the threshold.

    A and B alternate in short blocks inside each of several fresh processes; the interval is a
    Student-t interval over the processes' ratios. Inconclusive (the interval straddles the
    threshold): a warning and exit 0, or exit 4 with --fail-on-inconclusive.
    """
    from edgekd.bench.suite import run_compare

    opts = run_guarded(lambda: bench_options(
        (a, b), backend=backend, device=device, providers=providers, threads=threads, batch_sizes=batch_sizes,
        max_latency_regression=max_latency_regression, warmup=warmup, torch_mode=torch_mode, json_out=json_out,
        markdown_path=markdown))
    res = run_guarded(run_compare, a, b, opts, log=_progress,
                      **given(rounds=rounds, time_s=compare_time, confidence=confidence, processes=processes))
    typer.echo(res["summary"])
    if not res["passed"]:
        fail(GateError(f"latency regression: {res['summary']}"))
    if res["verdict"] == "inconclusive":
        from edgekd.bench.compare import InconclusiveError

        if fail_on_inconclusive:
            fail(InconclusiveError(f"inconclusive: {res['summary']}"))
        typer.echo(f"warning: inconclusive comparison (exit 0; --fail-on-inconclusive makes it exit 4): "
                   f"{res['summary']}", err=True)


def main() -> None:
    """The `edgekd` command. A package missing from a partial install (the README's bench-only
    `pip install edgekd typer rich` has no torch, onnx or PyYAML) is one line naming its extra."""
    try:
        app()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if not top or top == "edgekd":
            raise  # a broken edgekd module is a bug to show, not a missing extra
        from edgekd.deps import install_hint

        typer.echo(f"error: {top} is not installed, and this command needs it: install {install_hint(top)}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
