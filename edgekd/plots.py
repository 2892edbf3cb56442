"""Pictures of a run and of a benchmark (matplotlib, the `[plot]` extra, imported only when asked).

- `plot_training(run_dir)` -> `curves.png`: train/val loss, train/val top-1 of every head, learning
  rate and training throughput per epoch, from `metrics.jsonl`; the best epoch is marked.
- `plot_latency(report, out)`: the distribution of per-call latency, one panel per batch size, one
  line per artifact (from each latency row's fixed histogram, else its percentiles).
- `plot_accuracy_latency(report, out)`: top-1 against p50 latency of every artifact, the Pareto
  front (no other artifact is both faster and more accurate) marked.
- `plot_dho_surface(search, out)`: DHO's validation top-1 over the (a, b) grid (summary.json
  `dho_mix`: `alphas`, `betas`, `accuracy[b][a]`), the chosen point marked.
- `plot_path(path)`: what `edgekd plot PATH` does: a run directory gives curves.png (and
  dho_surface.png for a DHO run), a bench JSON report its latency and accuracy-latency charts.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no
global state, no display needed, nothing changes for a caller that uses pyplot itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgekd import names
from edgekd.errors import EdgekdError, MissingDependencyError

BENCH_SCHEMA = "edgekd-bench-report"  # edgekd.bench.report.SCHEMA (docs/schemas.md); see read_bench_report
CURVES_FILE = "curves.png"
DHO_SURFACE_FILE = "dho_surface.png"
DPI = 110


def _figure(width_in: float, height_in: float):
    from edgekd.deps import require

    require("matplotlib")
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _save(fig, out: str | Path) -> Path:
    from edgekd.io import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


# ---------------------------------------------------------------------------------------------- training


def read_records(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl of a run directory (a torn last line skipped); EdgekdError when there is none."""
    path = Path(run_dir) / names.METRICS_FILE
    if not path.is_file():
        raise EdgekdError(f"no {names.METRICS_FILE} in {run_dir}: not an edgekd run directory")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        raise EdgekdError(f"{path} holds no finished epoch yet")
    return records


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _accuracy_keys(records: list[dict]) -> list[str]:
    """train_acc, val_acc, then every head's (train_acc_<head>, val_acc_<head>) in first-seen order.

    `val_acc_main` repeats `val_acc` for single-output models and is left out when they are equal.
    """
    keys: dict[str, None] = {}
    for r in records:
        for k in r:
            if (k.startswith("train_acc") or k.startswith("val_acc")) and k != "best_val_acc":
                keys[k] = None
    out = [k for k in ("train_acc", "val_acc") if k in keys] + sorted(k for k in keys if k.count("_") >= 2)
    if "val_acc_main" in out and all(r.get("val_acc_main") == r.get("val_acc") for r in records):
        out.remove("val_acc_main")
    return out


def training_figure(records: list[dict], title: str = "edgekd run"):
    """Loss, top-1 of every head, learning rate and images per second against the epoch (a Figure)."""
    fig = _figure(11, 7.5)
    ax_loss, ax_acc, ax_lr, ax_speed = fig.subplots(2, 2).ravel()
    # the train loss is the method's whole objective (KD/LSSKD terms included); val is the output's NLL
    for key, label in (("train_loss", "train (method's loss)"), ("val_loss", "val (NLL of the output)")):
        x, y = _series(records, key)
        if x:
            ax_loss.plot(x, y, marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for key in _accuracy_keys(records):
        x, y = _series(records, key)
        split, _, head = key.partition("_acc")
        label = f"{split} {head.lstrip('_') or '(output)'}"
        ax_acc.plot(x, y, marker="o", ms=3, label=label, ls="--" if split == "train" else "-")
    x_val, y_val = _series(records, "val_acc")
    if x_val:
        best = max(range(len(y_val)), key=lambda i: (y_val[i], -i))  # the first epoch at the best value
        ax_acc.plot([x_val[best]], [y_val[best]], marker="*", ms=14, color="crimson", ls="none",
                    label=f"best val {y_val[best]:.2f}% (epoch {x_val[best]})")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1 per head")
    x, y = _series(records, "lr")
    ax_lr.plot(x, y, marker="o", ms=3)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (last step of the epoch)")
    x, y = _series(records, "img_per_s")
    ax_speed.plot(x, y, marker="o", ms=3)
    ax_speed.set(xlabel="epoch", ylabel="images / s", title="training throughput")
    ax_speed.set_ylim(bottom=0)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc, ax_lr, ax_speed):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}: {len(records)} epochs")
    return fig


def plot_training(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """curves.png of a run (or `out`): loss, top-1 of every head, learning rate, images per second, per epoch."""
    name = "/".join(Path(run_dir).resolve().parts[-2:])
    fig = training_figure(read_records(run_dir), f"edgekd run {name}")
    return _save(fig, out or Path(run_dir) / CURVES_FILE)


# ---------------------------------------------------------------------------------------------- bench


def _short(name: str, precision: Optional[str] = None) -> str:
    p = Path(name)
    label = "/".join(p.parts[-2:]) if len(p.parts) > 1 else name
    return f"{label} ({precision})" if precision else label


def _distribution(row: dict) -> Optional[tuple[list[float], list[float]]]:
    """(edges_ms, share of calls per bin) from a row's histogram or raw samples; None when it has neither."""
    hist = row.get("histogram")
    if hist and hist.get("counts"):
        total = sum(hist["counts"]) or 1
        return list(hist["edges_ms"]), [c / total for c in hist["counts"]]
    samples = row.get("samples_ms")
    if samples:
        import numpy as np

        lo, hi = max(min(samples), 1e-6), max(samples)
        edges = np.geomspace(lo, hi * 1.0001, 41) if hi > lo else np.array([lo * 0.99, lo * 1.01])
        counts, _ = np.histogram(samples, bins=edges)
        return edges.tolist(), (counts / counts.sum()).tolist()
    return None


def _log_ms_axis(ax) -> None:
    """A log time axis labelled 0.05, 0.1, 0.2, 0.5, 1, ... rather than 5x10^-2."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def latency_figure(report: dict[str, Any]):
    """Per-call latency distribution: one panel per batch size, one line per artifact (log time axis)."""
    batches = sorted({row["batch_size"] for a in report["artifacts"] for row in a.get("latency", [])
                      if row.get("p50_ms") is not None})
    if not batches:
        raise EdgekdError("the report has no latency measurement to plot")
    cols = min(len(batches), 3)
    rows = math.ceil(len(batches) / cols)
    fig = _figure(4.2 * cols + 1, 3.4 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, bs in zip(axes, batches):
        timed = [(i, art, next((r for r in art.get("latency", []) if r["batch_size"] == bs and r.get("p50_ms")), None))
                 for i, art in enumerate(report["artifacts"])]
        timed = [(i, art, row) for i, art, row in timed if row is not None]
        dists = [_distribution(row) for _, _, row in timed]
        if all(d is not None for d in dists):
            for (i, art, row), dist in zip(timed, dists):
                ax.stairs(dist[1], dist[0], color=f"C{i % 10}",
                          label=f"{_short(art['name'], art.get('precision'))}: p50 {row['p50_ms']:.3g} ms")
                ax.axvline(row["p50_ms"], color=f"C{i % 10}", ls=":", lw=1)
            ax.set(ylabel="share of calls")
        else:  # a report without histograms (older edgekd): min..max line, ticks at p50, p90, p99
            for k, (i, _, row) in enumerate(timed):
                marks = [row.get(key) for key in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
                ax.plot([marks[0], marks[-1]], [k, k], color=f"C{i % 10}", lw=1.5)
                ax.plot(marks[1:4], [k] * 3, "|", color=f"C{i % 10}", ms=14, mew=2)
            ax.set_yticks(range(len(timed)), [_short(a["name"], a.get("precision")) for _, a, _ in timed], fontsize=7)
            ax.set_ylim(-0.7, len(timed) - 0.3)
            ax.set(ylabel="min..max; ticks p50, p90, p99")
        _log_ms_axis(ax)
        ax.set(xlabel="latency per call (ms)", title=f"batch {bs}")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(batches):]:
        ax.set_visible(False)
    fig.suptitle("edgekd bench: latency distribution (dotted: p50)")
    return fig


def plot_latency(report: dict[str, Any], out: str | Path) -> Path:
    """latency_figure written to `out` (PNG)."""
    return _save(latency_figure(report), out)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (faster or equal and
    more accurate or equal, better on one), ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_acc = [], -math.inf
    for i in order:
        if points[i][1] > best_acc:
            front.append(i)
            best_acc = points[i][1]
    return front


def accuracy_latency_points(report: dict[str, Any], batch_size: Optional[int] = None) -> tuple[int, list[dict]]:
    """The batch size used and one {label, latency, accuracy} per artifact that has both."""
    scored = [a for a in report["artifacts"] if (a.get("accuracy") or {}).get("top1") is not None]
    if not scored:
        raise EdgekdError("no artifact in the report has a top-1: bench with --data to plot accuracy vs latency")
    timed = {a["name"]: {r["batch_size"]: r["p50_ms"] for r in a.get("latency", []) if r.get("p50_ms")}
             for a in scored}
    if batch_size is None:  # the smallest batch size every scored artifact was timed at, else the most common
        common = set.intersection(*(set(t) for t in timed.values())) if timed else set()
        counts: dict[int, int] = {}
        for t in timed.values():
            for bs in t:
                counts[bs] = counts.get(bs, 0) + 1
        if not counts:
            raise EdgekdError("no scored artifact has a latency measurement")
        batch_size = min(common) if common else max(counts, key=lambda bs: (counts[bs], -bs))
    pts = [{"label": _short(a["name"], a.get("precision")), "latency": timed[a["name"]][batch_size],
            "accuracy": a["accuracy"]["top1"]} for a in scored if batch_size in timed[a["name"]]]
    return batch_size, pts


def accuracy_latency_figure(report: dict[str, Any], batch_size: Optional[int] = None):
    """Top-1 against p50 latency of every artifact, the Pareto front drawn and its points ringed."""
    batch_size, pts = accuracy_latency_points(report, batch_size)
    front = pareto_front([(p["latency"], p["accuracy"]) for p in pts])
    fig = _figure(7.5, 5.2)
    ax = fig.subplots()
    for i, p in enumerate(pts):
        ax.plot(p["latency"], p["accuracy"], "o", ms=8, color=f"C{i % 10}", label=p["label"])
        ax.annotate(p["label"], (p["latency"], p["accuracy"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=7)
    fx = [pts[i]["latency"] for i in front]
    fy = [pts[i]["accuracy"] for i in front]
    ax.step(fx, fy, where="post", color="black", lw=1.2, ls="--", label="Pareto front")
    ax.plot(fx, fy, "o", ms=15, mfc="none", mec="black", mew=1.5)
    ax.set(xlabel=f"p50 latency at batch {batch_size} (ms)", ylabel="top-1 (%)",
           title="edgekd bench: accuracy vs latency (ringed: on the Pareto front)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_accuracy_latency(report: dict[str, Any], out: str | Path, batch_size: Optional[int] = None) -> Path:
    """accuracy_latency_figure written to `out` (PNG)."""
    return _save(accuracy_latency_figure(report, batch_size), out)


def bench_plot_paths(report_path: str | Path) -> dict[str, Path]:
    """Where the charts of a report go: beside it, named after it (two reports can share a directory)."""
    p = Path(report_path)
    return {"latency": p.with_name(f"{p.stem}.latency.png"),
            "accuracy_latency": p.with_name(f"{p.stem}.accuracy-latency.png")}


def plot_bench(report: dict[str, Any], report_path: str | Path, log: Callable[[str], None] = lambda s: None
               ) -> list[Path]:
    """The charts a report supports, beside `report_path`; a chart without data is skipped with a note."""
    paths = bench_plot_paths(report_path)
    written = []
    for key, fn in (("latency", plot_latency), ("accuracy_latency", plot_accuracy_latency)):
        try:
            written.append(fn(report, paths[key]))
        except EdgekdError as exc:
            if isinstance(exc, MissingDependencyError):
                raise
            log(f"note: {paths[key].name} not written: {exc}")
    return written


# ---------------------------------------------------------------------------------------------- DHO


def dho_surface(search: dict[str, Any]) -> tuple[list[float], list[float], list[list[Optional[float]]], float, float]:
    """(alphas, betas, accuracy[beta][alpha] in percent, chosen a, chosen b) from a DHO search record.

    Accepts summary.json's `dho_mix` {"alphas", "betas", "accuracy"} (rows per beta), a "grid" as a list of
    {"alpha", "beta", "accuracy"} or a mapping "(a, b)" / "a,b" -> accuracy.
    """
    a, b = float(search["alpha"]), float(search["beta"])
    if "accuracy" in search and "alphas" in search:
        return list(search["alphas"]), list(search["betas"]), [list(r) for r in search["accuracy"]], a, b
    grid = search.get("grid")
    if not grid:
        raise EdgekdError("the DHO search record has no grid of (a, b) accuracies")
    cells: dict[tuple[float, float], float] = {}
    items = grid if isinstance(grid, list) else [
        dict(zip(("alpha", "beta"), (k if isinstance(k, tuple) else tuple(float(v) for v in
                                                                          str(k).strip("()").split(",")))),
             accuracy=acc) for k, acc in grid.items()]
    for it in items:
        cells[(float(it["alpha"]), float(it["beta"]))] = float(it["accuracy"])
    alphas = sorted({k[0] for k in cells})
    betas = sorted({k[1] for k in cells})
    return alphas, betas, [[cells.get((x, y)) for x in alphas] for y in betas], a, b


def dho_surface_figure(search: dict[str, Any]):
    """Validation top-1 over the (a, b) grid as a heat map; the chosen (a, b) starred."""
    import numpy as np

    alphas, betas, acc, a, b = dho_surface(search)
    z = np.array([[np.nan if v is None else v for v in row] for row in acc], dtype=float)
    fig = _figure(8, 4.6)
    ax = fig.subplots()
    # cells centred on the grid values: beta is categorical (uneven steps), so rows are indexed
    da = (alphas[1] - alphas[0]) / 2 if len(alphas) > 1 else 0.5
    mesh = ax.imshow(z, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                     extent=(alphas[0] - da, alphas[-1] + da, -0.5, len(betas) - 0.5))
    fig.colorbar(mesh, ax=ax, label="validation top-1 (%)")
    ax.set_yticks(range(len(betas)), [f"{v:g}" for v in betas])
    row = min(range(len(betas)), key=lambda i: abs(betas[i] - b))
    ax.plot([a], [row], marker="*", ms=18, color="crimson", mec="white")
    chosen = f"chosen (star): a={a:g}, b={b:g}"
    if "val_acc_mix" in search:
        chosen += f", {search['val_acc_mix']:.2f}%"
    ax.set(xlabel="a (weight of the CE head's probabilities)", ylabel="b (KD-head temperature)",
           title=f"DHO mix p = a softmax(z_ce) + (1-a) softmax(z_kd / b): validation top-1\n{chosen}")
    return fig


def plot_dho_surface(search: dict[str, Any], out: str | Path) -> Path:
    """dho_surface_figure written to `out` (PNG)."""
    return _save(dho_surface_figure(search), out)


def dho_search_record(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """The DHO (a, b) search of a run (summary.json `dho_mix`), or None (other methods; a mix given, not searched)."""
    path = Path(run_dir) / names.SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return None
    record = summary.get("dho_mix") if isinstance(summary, dict) else None
    return record if isinstance(record, dict) and ("grid" in record or "accuracy" in record) else None


# ---------------------------------------------------------------------------------------------- entry points


def plot_run(run_dir: str | Path) -> list[Path]:
    """curves.png, and dho_surface.png when the run searched a DHO mix."""
    written = [plot_training(run_dir)]
    record = dho_search_record(run_dir)
    if record is not None:
        written.append(plot_dho_surface(record, Path(run_dir) / DHO_SURFACE_FILE))
    return written


def plot_path(path: str | Path, log: Callable[[str], None] = lambda s: None) -> list[Path]:
    """`edgekd plot PATH`: a run directory or a bench JSON report; returns the files written."""
    p = Path(path)
    if p.is_dir():
        return plot_run(p)
    if not p.is_file():
        raise EdgekdError(f"not found: {path}")
    return plot_bench(read_bench_report(p), p, log)


def read_bench_report(path: Path) -> dict[str, Any]:
    """A bench JSON report, checked by its schema marker only: plots read a few figures, and this module
    stays a leaf (edgekd.bench.report writes its charts through it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        from edgekd.errors import first_line

        raise EdgekdError(f"{path} is not a JSON bench report ({first_line(exc, 100)})") from None
    if not isinstance(data, dict) or data.get("schema") != BENCH_SCHEMA or not isinstance(data.get("artifacts"), list):
        raise EdgekdError(f"{path} is not an edgekd bench report (schema marker missing) nor a run directory")
    return data


def plot_run_quietly(run_dir: str | Path, log: Callable[[str], None] = lambda s: None) -> list[Path]:
    """After training: the run's plots when matplotlib is installed; nothing (and no noise) when it is not.

    A plotting failure never fails a finished training run: it is reported in one line.
    """
    try:
        _figure(1, 1)  # matplotlib importable (and working)?
    except MissingDependencyError:
        return []
    try:
        written = plot_run(run_dir)
    except Exception as exc:  # a finished run must not fail for a picture
        from edgekd.errors import first_line

        log(f"note: curves not plotted ({first_line(exc)})")
        return []
    log("plots: " + ", ".join(str(w) for w in written))
    return written


__all__ = ["training_figure", "latency_figure", "accuracy_latency_figure", "dho_surface_figure", "plot_training",
           "plot_latency", "plot_accuracy_latency", "plot_dho_surface", "plot_bench", "plot_run",
           "plot_path", "plot_run_quietly", "pareto_front", "bench_plot_paths", "dho_surface"]
