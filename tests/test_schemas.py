"""The JSON schemas in docs/schemas/ against files edgekd really writes: a run summary, an export
manifest (also the copy embedded in the ONNX file), a bench report with a baseline gate, and a
compare report; plus the committed example reports. Also the bench CLI table at 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="needs the [test] extra: jsonschema is not installed")

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
DATA = "synthetic:n_train=300,n_test=100"


def _schemas() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json"))}


def validator(name: str):
    """A draft 2020-12 validator for docs/schemas/<name>, with the other schemas resolvable by $id."""
    from referencing import Registry, Resource

    schemas = _schemas()
    registry = Registry().with_resources([(s["$id"], Resource.from_contents(s)) for s in schemas.values()])
    return jsonschema.Draft202012Validator(schemas[name], registry=registry)


def assert_valid(name: str, doc: dict) -> None:
    errors = sorted(validator(name).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_schemas_are_valid_versioned_and_documented():
    schemas = _schemas()
    assert set(schemas) == {"bench-report.v1.json", "compare-report.v1.json", "manifest.v1.json",
                            "run-summary.v1.json"}
    doc = (SCHEMAS.parent / "schemas.md").read_text()
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(":1") and name in doc
    from edgekd.bench.gate import COMPARE_SCHEMA, COMPARE_SCHEMA_VERSION
    from edgekd.bench.report import SCHEMA, SCHEMA_VERSION
    from edgekd.export.manifest import MANIFEST_FORMAT, MANIFEST_VERSION

    bench = schemas["bench-report.v1.json"]["properties"]
    assert (bench["schema"]["const"], bench["schema_version"]["const"]) == (SCHEMA, SCHEMA_VERSION)
    cmp = schemas["compare-report.v1.json"]["properties"]
    assert (cmp["schema"]["const"], cmp["schema_version"]["const"]) == (COMPARE_SCHEMA, COMPARE_SCHEMA_VERSION)
    man = schemas["manifest.v1.json"]["properties"]
    assert (man["format"]["const"], man["format_version"]["const"]) == (MANIFEST_FORMAT, MANIFEST_VERSION)


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    """A tiny run, its export (+ INT8), a bench report gated against a first one, and a compare report."""
    from edgekd.bench.latency import LatencySettings
    from edgekd.bench.suite import BenchOptions, run_bench, run_compare
    from edgekd.config import build_config
    from edgekd.export.pipeline import ExportOptions, run_export
    from edgekd.train.loop import train

    root = tmp_path_factory.mktemp("schemas")
    quiet = lambda *a, **k: None  # noqa: E731
    cfg = build_config(overrides=dict(model="tiny", epochs=2, out=str(root / "run"), data=DATA, max_steps_per_epoch=3,
                                      progress=False))
    train(cfg, log=quiet)
    # a DHO run (the first run as its teacher): its summary carries the (a, b) search grid
    train(build_config(overrides=dict(model="tiny", method="dho", teacher=str(root / "run" / "best.pt"), epochs=1,
                                      out=str(root / "dho"), data=DATA, max_steps_per_epoch=2, progress=False,
                                      dho={"labeled_per_class": 5})), log=quiet)
    run_export(ExportOptions(ckpt=str(root / "run" / "best.pt"), out=str(root / "exp"), int8=True, calib_size=64),
               log=quiet)
    fast = LatencySettings(warmup_iters=2, warmup_time_s=0.0, min_time_s=0.05, min_iters=5)
    onnx, int8 = str(root / "exp" / "model.onnx"), str(root / "exp" / "model.int8.onnx")
    base = run_bench(BenchOptions(models=(onnx, int8), batch_sizes=(1, 4), data=DATA, threads=1, latency=fast,
                                  reference=str(root / "run" / "best.pt"), json_path=root / "base.json"), log=quiet)
    head = run_bench(BenchOptions(models=(onnx,), batch_sizes=(1, 4), data=DATA, threads=1, latency=fast,
                                  baseline=root / "base.json", max_latency_regression=10.0,
                                  json_path=root / "head.json", markdown_path=root / "head.md"), log=quiet)
    run_compare(onnx, int8, BenchOptions(models=(), threads=1, latency=fast, json_path=root / "compare.json"),
                rounds=5, time_s=0.1)
    assert base["artifacts"] and head["gate"] is not None
    return root


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_run_summary_matches_its_schema(emitted):
    summary = _read(emitted / "run" / "summary.json")
    assert_valid("run-summary.v1.json", summary)
    assert summary["schema"] == "edgekd-run-summary" and summary["best_epoch"] in (1, 2)
    assert summary["train_time_s"] > 0
    dho = _read(emitted / "dho" / "summary.json")
    assert_valid("run-summary.v1.json", dho)
    assert dho["dho_mix"]["source"] == "search" and len(dho["dho_mix"]["accuracy"]) == 7


def test_manifest_matches_its_schema_in_both_copies(emitted):
    from edgekd.runtime.manifest import read_manifest_data

    on_disk = _read(emitted / "exp" / "manifest.json")
    assert_valid("manifest.v1.json", on_disk)
    assert "int8" in on_disk
    assert_valid("manifest.v1.json", read_manifest_data(emitted / "exp" / "model.onnx"))


def test_bench_and_compare_reports_match_their_schemas(emitted):
    base, head = _read(emitted / "base.json"), _read(emitted / "head.json")
    assert_valid("bench-report.v1.json", base)
    assert_valid("bench-report.v1.json", head)
    assert base["artifacts"][0]["parity"] is not None and head["gate"]["checks"]
    assert_valid("compare-report.v1.json", _read(emitted / "compare.json"))


def test_schemas_reject_what_a_reader_could_not_use(emitted):
    head = _read(emitted / "head.json")
    head["schema_version"] = 2
    assert list(validator("bench-report.v1.json").iter_errors(head))
    head = _read(emitted / "head.json")
    head["artifacts"][0]["latency"][0]["p50_ms"] = "fast"
    assert list(validator("bench-report.v1.json").iter_errors(head))
    manifest = _read(emitted / "exp" / "manifest.json")
    del manifest["class_names"]
    assert list(validator("manifest.v1.json").iter_errors(manifest))
    cmp = _read(emitted / "compare.json")
    cmp["result"]["verdict"] = "maybe"
    assert list(validator("compare-report.v1.json").iter_errors(cmp))


def test_committed_example_reports_match_the_schema():
    root = Path(__file__).resolve().parents[1]
    reports = [p for p in sorted((root / "benchmarks" / "results").glob("*.json"))
               if _read(p).get("schema") == "edgekd-bench-report"]
    reports += sorted((root / "docs" / "examples").glob("*.json"))
    assert reports
    for p in reports:
        doc = _read(p)
        name = "compare-report.v1.json" if doc.get("schema") == "edgekd-bench-compare" else "bench-report.v1.json"
        assert_valid(name, doc)


def test_bench_cli_table_fits_80_columns(emitted, monkeypatch):
    from typer.testing import CliRunner

    from edgekd.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("NO_COLOR", raising=False)
    exp = emitted / "exp"
    res = CliRunner().invoke(app, ["bench", str(exp / "model.onnx"), str(exp / "model.int8.onnx"),
                                   "--batch-sizes", "1", "--data", DATA, "--min-time", "0.05", "--min-iters", "5",
                                   "--warmup", "2", "--threads", "1", "--allow-slow-int8"])
    assert res.exit_code == 0, res.output
    table = res.stdout
    assert "edgekd bench" in table and "\x1b[" not in table  # not a terminal: no colour
    assert max(len(line) for line in table.splitlines()) <= 80
