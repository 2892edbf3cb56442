"""Reports people read: the bench table at 80/100/160 columns, colour rules, markdown with base vs
head deltas, and the PNG charts (training curves, latency distribution, accuracy vs latency with
its Pareto front, DHO surface). Synthetic reports: nothing here trains or times a model."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.bench.gate import check_baseline
from edgekd.bench.latency import summarize_samples
from edgekd.bench.markdown import render_compare_markdown, render_report_markdown
from edgekd.bench.report import new_report
from edgekd.bench.table import choose_layout, render_table, table_records, terminal_width, use_colour, visible_len
from edgekd.errors import EdgekdError, MissingDependencyError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENV = {"cpu_model": "AMD EPYC 7B13", "cpu_count": 2, "cpu_affinity": 2,
       "packages": {"onnxruntime": "1.32.0", "torch": "2.13.0"}}


def synthetic_report(scale: float = 1.0, top1: tuple[float, float] = (96.4, 96.0), seed: int = 0) -> dict:
    """Three artifacts x three batch sizes with gamma-distributed per-call samples and a histogram."""
    rng = np.random.default_rng(seed)
    rep = new_report(dict(ENV), {"batch_sizes": [1, 8, 32]})
    for name, prec, base, acc in (("runs/demo/export/model.onnx", "fp32", 0.09, top1[0]),
                                  ("runs/demo/export/model.int8.onnx", "int8", 0.06, top1[1]),
                                  ("runs/demo/run/best.pt", "fp32", 0.4, top1[0])):
        latency = []
        for bs in (1, 8, 32):
            samples = base * scale * bs ** 0.8 * (1 + rng.gamma(2, 0.05, 400))
            row = summarize_samples(samples, bs).to_dict()  # with its fixed histogram, as the bench writes it
            row["status"] = "ok"
            latency.append(row)
        rep["artifacts"].append({
            "name": name, "path": "/abs/" + name, "format": "onnx" if name.endswith(".onnx") else "checkpoint",
            "backend": "ort" if name.endswith(".onnx") else "torch", "device": "cpu", "precision": prec,
            "size_bytes": 310_000, "sha256": None, "input_shape": [3, 32, 32], "output_kind": "logits",
            "runner_settings": {}, "accuracy": {"top1": acc, "top5": 99.8, "n": 500},
            "parity": {"max_abs_diff": 1.2e-6, "top1_agreement": 100.0}, "status": "ok", "warnings": [],
            "latency": latency,
            # what --baseline compares before any figure (edgekd.bench.identity)
            "identity": {"sha256": None, "source_sha256": None, "model": "resnet8", "input_shape": [3, 32, 32],
                         "num_classes": 10, "classes_sha256": None, "precision": prec, "output_kind": "logits"},
            "data": {"spec": "synthetic", "split": "test", "n": 500, "sha256": "0" * 64}})
    return rep


# ------------------------------------------------------------------------------ terminal table


@pytest.mark.parametrize("width", [80, 100, 160])
def test_table_fits_the_terminal_width_without_wrapping(width):
    rep = synthetic_report()
    rep["artifacts"][1]["latency"][0]["status"] = "int8 slower than fp32 (0.91x)"
    text = render_table(rep, width=width, colour=False)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    # every (artifact, batch) row is exactly one line: p50 figures all appear, each on its own line
    for art in rep["artifacts"]:
        for row in art["latency"]:
            p50 = f"{row['p50_ms']:.3f}" if row["p50_ms"] < 10 else f"{row['p50_ms']:.1f}"
            assert sum(p50 in line for line in lines) == 1, (p50, text)
    assert "int8 slower than fp32 (0.91x)" in text  # a status is never cut off
    name, keys, inline, _ = choose_layout(table_records(rep), width)
    if width < 100:
        assert name == "narrow" and not inline and "p90" not in keys  # fewer columns, status on its own line
        status_line = next(line for line in lines if "int8 slower" in line)
        assert status_line.startswith("    ") and "0.0" not in status_line.split("int8")[0]
    else:
        assert "p90" in keys


def test_wide_terminal_keeps_the_status_column_when_it_fits():
    rep = synthetic_report()
    for art in rep["artifacts"]:
        art["parity"] = None
    name, keys, inline, _ = choose_layout(table_records(rep), 160)
    assert name == "wide" and inline
    header = render_table(rep, width=160, colour=False).splitlines()[1]
    assert header.rstrip().endswith("status") and "p90 ms" in header


def test_a_shared_directory_is_named_once_when_names_do_not_fit():
    rep = synthetic_report()
    for art in rep["artifacts"]:
        art["name"] = "/home/ci/work/gate/head/" + art["name"]
    text = render_table(rep, width=80, colour=False)
    assert text.splitlines()[0] == "edgekd bench (artifacts in /home/ci/work/gate/head/runs/demo/)"
    assert "\nexport/model.int8.onnx " in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "artifacts in" not in render_table(rep, width=200, colour=False)  # whole names fit: nothing moved


def test_long_artifact_names_are_shortened_from_the_left():
    rep = synthetic_report()
    rep["artifacts"][0]["name"] = "/very/long/path/to/a/continuous/integration/workspace/gate/head/export/model.onnx"
    text = render_table(rep, width=80, colour=False)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" in text and "export/model.onnx" in text


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_colour(Tty())
    rep = synthetic_report()
    rep["artifacts"][2]["latency"][1]["status"] = "regression"
    coloured = render_table(rep, width=100, colour=True)
    assert "\x1b[31m" in coloured and "\x1b[1m" in coloured  # red failure, bold header
    assert max(visible_len(line) for line in coloured.splitlines()) <= 100
    assert "\x1b[" not in render_table(rep, width=100, colour=False)


def test_terminal_width_from_columns_else_wide_for_pipes(monkeypatch):
    monkeypatch.setenv("COLUMNS", "87")
    assert terminal_width(io.StringIO()) == 87
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 160  # a log file does not wrap


def test_report_render_table_delegates_to_the_fitted_table(monkeypatch):
    from edgekd.bench import report as report_mod

    monkeypatch.setenv("COLUMNS", "80")
    text = report_mod.render_table(synthetic_report())
    assert max(len(line) for line in text.splitlines()) <= 80 and "\x1b[" not in text


# ------------------------------------------------------------------------------ markdown


def test_markdown_shows_base_and_head_side_by_side_with_deltas():
    base, head = synthetic_report(), synthetic_report(scale=1.15, top1=(96.2, 95.2))
    head["gate"] = check_baseline(head, base, 0.10, 0.5)
    head["gate"]["baseline"] = "gate/base-report.json"
    text = render_report_markdown(head, images=["head-report.latency.png"])
    assert "Gate: FAILED against `gate/base-report.json`" in text
    assert "| artifact | figure | baseline | current | change | threshold | verdict |" in text
    top1_row = next(line for line in text.splitlines() if "model.int8.onnx | top-1" in line)
    assert "96.00%" in top1_row and "95.20%" in top1_row and "-0.80 pts" in top1_row and "fail" in top1_row
    lat_row = next(line for line in text.splitlines() if "model.onnx | p50 latency, batch 8" in line)
    assert "+15.0%" in lat_row and "≤ +10%" in lat_row and " ms |" in lat_row
    ok_row = next(line for line in text.splitlines() if "export/model.onnx | top-1" in line)
    assert "-0.20 pts" in ok_row and "pass" in ok_row
    assert "| artifact | format |" in text and "p99 ms" in text  # the full results follow
    assert "![head-report.latency](head-report.latency.png)" in text
    # every gated figure has its row: 3 artifacts x (top-1 + 3 batch sizes)
    assert sum(line.startswith("| runs/") and ("top-1 |" in line or "latency, batch" in line)
               for line in text.splitlines()) == 12


def test_compare_markdown_names_both_files():
    result = {"schema": "edgekd-bench-compare", "a": "gate/base/export/model.onnx", "b": "gate/head/export/model.onnx",
              "batch_size": 1, "backend": ["ort", "ort"], "device": "cpu", "threads": 2, "passed": False,
              "summary": "latency ratio B/A = 1.300 ...",
              "result": {"ratio": 1.3, "ci_low": 1.21, "ci_high": 1.38, "confidence": 0.95, "threshold": 0.1,
                         "verdict": "regression", "rounds": 30, "calls_per_round": [40, 31], "a_p50_ms": 0.085,
                         "b_p50_ms": 0.11, "round_ratios": [], "wall_s": 2.0}}
    text = render_compare_markdown(result)
    assert "`gate/base/export/model.onnx`" in text and "`gate/head/export/model.onnx`" in text
    assert "FAILED" in text and "0.085 ms" in text and "0.110 ms" in text
    assert "B/A 1.300 (95% CI 1.210–1.380)" in text and "B/A ≤ 1.10" in text and "fail" in text


# ------------------------------------------------------------------------------ plots

needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="needs the [plot] extra: matplotlib is not installed")


def _labels(fig) -> set[str]:
    return {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}


def _png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 10_000 and path.read_bytes()[:8] == PNG_MAGIC


def _write_metrics(run: Path, epochs: int = 6) -> None:
    run.mkdir(parents=True, exist_ok=True)
    recs = [{"epoch": e, "lr": 0.05 * (1 + math.cos(math.pi * e / epochs)), "train_loss": 2.3 * math.exp(-e / 3),
             "train_acc": 100 - 90 * math.exp(-e / 3), "img_per_s": 5000 + e, "epoch_time_s": 1.0,
             "val_acc": 100 - 88 * math.exp(-e / 3), "val_loss": 2.2 * math.exp(-e / 3),
             "val_acc_main": 100 - 88 * math.exp(-e / 3), "val_acc_aux1": 100 - 95 * math.exp(-e / 3),
             "best_val_acc": 0.0} for e in range(1, epochs + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"epoch": 7, "tor')


@needs_mpl
def test_training_curves_png_with_every_head(tmp_path):
    from edgekd.plots import plot_run, read_records, training_figure

    run = tmp_path / "run"
    _write_metrics(run)
    fig = training_figure(read_records(run))
    assert {"epoch", "loss", "top-1 (%)", "learning rate", "images / s"} <= _labels(fig)
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any("aux1" in t for t in legend) and any("best val" in t for t in legend)
    written = plot_run(run)
    assert written == [run / "curves.png"]
    _png(written[0])


@needs_mpl
def test_bench_pngs_latency_distribution_and_pareto(tmp_path):
    from edgekd.plots import accuracy_latency_figure, latency_figure, pareto_front, plot_bench

    rep = synthetic_report()
    fig = latency_figure(rep)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["batch 1", "batch 8", "batch 32"]
    assert {"latency per call (ms)", "share of calls"} <= _labels(fig)
    fig = accuracy_latency_figure(rep)
    assert {"p50 latency at batch 1 (ms)", "top-1 (%)"} <= _labels(fig)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "Pareto front" in legend
    # the checkpoint is slower than the ONNX model at the same top-1: dominated; INT8 is faster, less accurate
    assert pareto_front([(0.09, 96.4), (0.06, 96.0), (0.4, 96.4)]) == [1, 0]
    assert pareto_front([(1.0, 50.0), (1.0, 60.0), (2.0, 55.0)]) == [1]
    path = tmp_path / "head-report.json"
    written = plot_bench(rep, path)
    assert written == [tmp_path / "head-report.latency.png", tmp_path / "head-report.accuracy-latency.png"]
    for p in written:
        _png(p)
    # a report without accuracy still gets its latency chart, and says why the other is missing
    for art in rep["artifacts"]:
        art["accuracy"] = None
    notes: list[str] = []
    assert plot_bench(rep, tmp_path / "noacc.json", notes.append) == [tmp_path / "noacc.latency.png"]
    assert "--data" in notes[0]


@needs_mpl
def test_dho_surface_png_marks_the_chosen_point(tmp_path):
    import torch

    from edgekd.heads.dual import search_mix
    from edgekd.plots import dho_surface, dho_surface_figure, plot_run

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (200,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    z_ce = torch.randn(200, 10, generator=g) + 3 * onehot
    res = search_mix(z_ce, 2 * torch.randn(200, 10, generator=g) + 4 * onehot, y)
    record = {"alpha": res.alpha, "beta": res.beta, "val_acc_mix": res.accuracy,
              "grid": [{"alpha": a, "beta": b, "accuracy": acc} for (a, b), acc in res.grid.items()]}
    alphas, betas, acc, a, b = dho_surface(record)
    assert len(alphas) == 21 and len(betas) == 7
    assert acc[betas.index(b)][alphas.index(a)] == pytest.approx(res.accuracy)
    fig = dho_surface_figure(record)
    assert {"a (weight of the CE head's probabilities)", "b (KD-head temperature)"} <= _labels(fig)
    assert f"a={a:g}, b={b:g}" in fig.axes[0].get_title()
    run = tmp_path / "run"
    _write_metrics(run)
    # summary.json's dho_mix as edgekd.train.dho writes it: accuracy[b][a] in percent
    mix = {"alpha": res.alpha, "beta": res.beta, "source": "search", "val_acc_mix": res.accuracy,
           "alphas": alphas, "betas": betas, "accuracy": acc}
    (run / "summary.json").write_text(json.dumps({"model": "tiny", "dho_mix": mix}))
    written = plot_run(run)
    assert written[1] == run / "dho_surface.png"
    _png(written[1])


def test_without_matplotlib_plot_names_the_extra_and_training_stays_quiet(tmp_path, monkeypatch):
    from edgekd.plots import plot_path, plot_run_quietly

    run = tmp_path / "run"
    _write_metrics(run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingDependencyError, match=r"edgekd\[plot\]"):
        plot_path(run)
    assert plot_run_quietly(run) == [] and not (run / "curves.png").exists()


def test_plot_path_errors_are_one_line(tmp_path):
    from edgekd.plots import plot_path

    with pytest.raises(EdgekdError, match="not found"):
        plot_path(tmp_path / "nope")
    with pytest.raises(EdgekdError, match="metrics.jsonl"):
        plot_path(tmp_path)
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    with pytest.raises(EdgekdError, match="not an edgekd bench report"):
        plot_path(bad)


# ------------------------------------------------------------------------------ progress


def test_progress_without_a_terminal_prints_a_line_every_interval():
    from edgekd.progress import RunProgress, format_duration

    now = [0.0]
    lines: list[str] = []
    prog = RunProgress(total_steps=100, start_step=20, interval_s=10, stream=io.StringIO(), log=lines.append,
                       clock=lambda: now[0])
    prog.set_epoch(3, 10)
    for step in range(21, 61):  # 40 steps at 1 s each
        now[0] += 1.0
        prog.update(step, "loss 0.8321 acc 71.2%")
    prog.close()
    assert len(lines) == 4  # at 10, 20, 30 and 40 s: never silent for a whole epoch
    last = lines[-1]
    assert last.startswith("epoch 3/10  step 60/100 (60.0%)  loss 0.8321 acc 71.2%")
    assert "elapsed 0:40" in last and "ETA 0:40" in last  # 40 steps left at 1 step/s (resumed steps not counted)
    assert format_duration(3725) == "1:02:05" and format_duration(62) == "1:02"
    quiet: list[str] = []
    off = RunProgress(total_steps=10, enabled=False, interval_s=0.0, stream=io.StringIO(), log=quiet.append)
    off.update(5, "x")
    assert not quiet


def test_fingerprint_has_cpu_flags_and_load_average():
    from edgekd.bench.fingerprint import collect_fingerprint, describe_fingerprint, isa_summary

    fp = collect_fingerprint()
    assert isinstance(fp["cpu_flags"], list) and all(isinstance(f, str) for f in fp["cpu_flags"])
    assert fp["load_avg"] is None or len(fp["load_avg"]) == 3
    assert isa_summary(["avx2", "avx512f", "avx512_vnni"]) == "AVX-512 VNNI"
    assert isa_summary(["avx2", "amx_tile", "amx_int8"]) == "AMX"
    assert isa_summary(["asimd", "asimddp"]) == "NEON dotprod"
    line = describe_fingerprint({**fp, "cpu_flags": ["avx2"], "load_avg": [1.5, 1.0, 0.5]})
    assert "AVX2" in line and "load 1.50" in line
