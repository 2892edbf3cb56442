"""Every proof can fail: each gate is fed a deliberately broken input and must refuse it.

docs/gates.md lists these gates with the broken input each test here feeds it and the exit code.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.data.dataset import load_dataset
from edgekd.errors import GateError
from edgekd.export.onnx import check_parity, export_onnx, make_session, parity_figures
from edgekd.export.pipeline import ExportOptions, run_export
from edgekd.models import build_model
from tests.test_export import SYN, make_checkpoint, real_batch


@pytest.fixture(scope="module")
def data():
    return load_dataset(SYN)


# ------------------------------------------------------------------------------ ONNX parity (hole 1)


class NanOnSomeRows(nn.Module):
    """A classifier whose output is NaN on the images with a bright top-left pixel (about half)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        bad = (x[:, 0, 0, 0] > 0).unsqueeze(1)
        return torch.where(bad, torch.full_like(z, float("nan")), z)


class NearUniformProbs(nn.Module):
    """Probabilities about 1e-5 apart (standardised logits x 1e-4: far below the parity tolerance, far above
    float32 rounding), optionally with the classes rolled by one (every top-1 moves)."""

    def __init__(self, net: nn.Module, roll: bool = False):
        super().__init__()
        self.net, self.roll = net, roll

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        z = (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-12)
        p = torch.softmax(z * 1e-4, dim=1)
        return torch.roll(p, 1, dims=1) if self.roll else p


def test_parity_fails_when_outputs_are_nan_on_some_rows(data):
    torch.manual_seed(0)
    net = build_model("tiny").eval()
    x = real_batch(data, 32)
    assert 0 < int((x[:, 0, 0, 0] > 0).sum()) < 32  # NaN on some rows only
    broken = NanOnSomeRows(net).eval()
    # NaN on both sides: |nan - nan| > tol is False, which is how NaN used to pass
    with pytest.raises(GateError, match=r"not finite .* on \d+ of 32 images \(ONNX Runtime \d+, torch \d+\)"):
        check_parity(export_onnx(broken, (3, 32, 32), names.LOGITS_NAME), broken, x)
    # NaN in the ONNX graph only, torch clean
    with pytest.raises(GateError, match="not finite"):
        check_parity(export_onnx(broken, (3, 32, 32), names.LOGITS_NAME), net, x)
    # and the clean pair passes with every row counted
    ok = check_parity(export_onnx(net, (3, 32, 32), names.LOGITS_NAME), net, x)
    assert ok["finite"] and ok["batch"] == 32 and ok["top1_agreement"] == 100.0


def test_parity_counts_every_row_so_a_systematic_flip_among_near_ties_fails(data):
    torch.manual_seed(0)
    net = build_model("tiny").eval()
    x = real_batch(data, 32)
    rolled = export_onnx(NearUniformProbs(net, roll=True), (3, 32, 32), names.PROBS_NAME)
    want = NearUniformProbs(net).eval()
    with torch.no_grad():
        diff = float((want(x) - NearUniformProbs(net, roll=True)(x)).abs().max())
    assert diff < 1e-4  # within the tolerance: only the agreement can catch it
    # every row is a near-tie, so the old rule (agreement on decisive rows only) had nothing to judge
    with pytest.raises(GateError, match=r"agreement 0\.00% < 99.0% on 32 images \(32 flips among 32 near-ties"):
        check_parity(rolled, want, x)


def test_parity_reports_near_tie_flips_separately():
    rng = np.random.default_rng(0)
    want = rng.standard_normal((200, 10)).astype(np.float32)
    want[0, :2] = [5.0, 5.0 - 1e-5]  # a near-tie (margin below twice the tolerance)
    got = want.copy()
    got[0, :2] = [5.0 - 1e-5, 5.0]  # flipped by rounding-sized noise
    fig = parity_figures(got, want, atol=1e-4, min_agreement=99.0)
    assert fig["top1_agreement"] == 99.5 and fig["near_ties"] >= 1 and fig["near_tie_flips"] == 1
    assert fig["decisive_flips"] == 0
    with pytest.raises(GateError, match="agreement 99.50%"):
        parity_figures(got, want, atol=1e-4, min_agreement=99.9)
    with pytest.raises(GateError, match="shape"):
        parity_figures(got[:, :5], want)


def test_export_with_infinite_outputs_exits_3_and_writes_nothing(tmp_path, data):
    ck = make_checkpoint(tmp_path / "inf.pt", data)
    sd = torch.load(ck, weights_only=True)
    sd["model_state"]["student.head.bias"][0] = float("inf")  # class 0 logit is +inf on every image
    torch.save(sd, ck)
    out = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", str(ck), "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert "ONNX parity failed: outputs are not finite" in res.output and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.pt"]


# ------------------------------------------------------------------------------ strip proof (hole 2)


def _corrupting_strip(monkeypatch, in_place: bool) -> None:
    """Make surgery's strip return a student with one weight changed: in a copy, or in the training
    model itself (a strip that breaks the original and hands it back)."""
    import edgekd.surgery.deploy as deploy_mod

    real = deploy_mod.strip_aux_heads

    def broken(model):
        student = model.student.eval() if in_place else real(model)
        with torch.no_grad():
            student.head.weight[0, 0] += 0.5
        return student

    monkeypatch.setattr(deploy_mod, "strip_aux_heads", broken)


@pytest.mark.parametrize("in_place", [False, True])
def test_strip_proof_fails_when_the_stripped_student_is_corrupted(monkeypatch, tmp_path, data, in_place):
    ck = make_checkpoint(tmp_path / "aux.pt", data, method="lsskd", lsskd={"stages": (0, 1)})
    _corrupting_strip(monkeypatch, in_place)
    out = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", str(ck), "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert "surgery check failed: strip" in res.output and not out.exists()


def test_strip_proof_compares_with_the_main_head_of_the_training_model(data):
    from edgekd.config import build_config
    from edgekd.surgery import make_deploy_module
    from edgekd.surgery.verify import reference_outputs, verify_strip
    from edgekd.train.model import build_training_model

    cfg = build_config(overrides=dict(model="tiny", method="lsskd", data=SYN))
    tm = build_training_model(cfg, build_model("tiny", num_classes=10)).eval()
    x = real_batch(data, 16)
    ref = reference_outputs(tm, x)
    assert {"main", "aux0", "mix"} <= set(ref)
    deploy, report = make_deploy_module(tm, x)
    assert report.checks[0]["check"] == "strip" and report.checks[0]["max_abs_diff"] == 0.0
    with torch.no_grad():
        deploy.stages[0][0][0].weight[0, 0, 0, 0] += 1.0  # one backbone weight
    with pytest.raises(GateError, match="surgery check failed: strip"):
        verify_strip(deploy, tm, x, ref)


# ------------------------------------------------------------------------------ surgery on a ModuleStudent (hole 7)


class UserNet(nn.Module):
    """A user's own classifier: two conv blocks, global mean, a linear head named `fc`."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(x)).mean((2, 3)))


def _user_training_model(method: str, **overrides):
    from edgekd.config import build_config
    from edgekd.models import ModuleStudent
    from edgekd.train.model import build_training_model

    torch.manual_seed(0)
    student = ModuleStudent(UserNet(), ["block1", "block2"], "fc")
    cfg = build_config(overrides=dict(model="tiny", method=method, data=SYN, **overrides))
    tm = build_training_model(cfg, student)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if tm.kd_head is not None:
            tm.mix_alpha.fill_(0.35)
            tm.mix_beta.fill_(2.0)
    return tm.eval(), student


@pytest.mark.parametrize("method,overrides,fold", [
    ("dho", {"dho": {"normalized_kd_head": True}}, "exact"),  # the fold that crashed with IndexError
    ("dho", {"dho": {"normalized_kd_head": True}}, "ce"),
    ("dho", {}, "exact"),
    ("dho", {}, "kd"),
    ("lsskd", {"lsskd": {"stages": (0, 1)}}, None),
])
def test_surgery_on_a_module_student_works_end_to_end_through_export(data, method, overrides, fold):
    from edgekd.export.onnx import check_graph, check_onnx, count_onnx_params
    from edgekd.surgery import make_deploy_module
    from edgekd.surgery.strip import training_only_parameters

    tm, student = _user_training_model(method, **overrides)
    x = real_batch(data, 32)
    deploy, report = make_deploy_module(tm, x, fold=fold)
    assert student._captured == []  # the copies' hooks capture into their own lists, not the original's
    with torch.no_grad():
        feats, pooled = deploy.student.forward_features(x) if fold == "exact" else deploy.forward_features(x)
    assert len(feats) == 2 and pooled.shape == (32, 16) and student._captured == []
    kind = names.PROBS_NAME if fold == "exact" else names.LOGITS_NAME
    assert report.output_kind == kind
    proto = export_onnx(deploy, (3, 32, 32), kind)
    check_onnx(proto)
    parity = check_parity(proto, deploy, x)
    assert parity["top1_agreement"] == 100.0
    # and the exported graph computes the training model's inference output
    with torch.no_grad():
        want = tm(x) if fold in (None, "exact") else (tm.heads(x)["main"] if fold == "ce" else tm.heads(x)["kd"] / 2.0)
    got = make_session(proto).run(None, {names.INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)
    # one input, one output, and no weight of an auxiliary classifier in the graph
    aux = {k: v for k, v in training_only_parameters(tm).items() if k.startswith("aux_heads.")}
    assert (len(aux) > 0) == (method == "lsskd")
    graph = check_graph(proto, kind, aux, expected_params=count_onnx_params(proto))
    assert graph["outputs"] == [kind]


# ------------------------------------------------------------------------------ INT8 of a probability model (hole 8)


def test_int8_of_a_folded_dho_model_keeps_the_probability_mix_in_float(tmp_path, data):
    ck = make_checkpoint(tmp_path / "dho.pt", data, method="dho", a=0.35, b=2.0)
    r = run_export(ExportOptions(ckpt=str(ck), out=str(tmp_path / "e"), int8=True, calib_size=64,
                                 max_accuracy_drop=100.0), log=lambda s: None, data=data)
    q = r.manifest["int8"]
    assert q["output_kind"] == names.PROBS_NAME and q["output"].startswith("float")
    assert {"Softmax", "Mul", "Add"} <= {n.split("/")[-1].split("_")[0] for n in q["float_nodes"]}
    graph = onnx.load(str(r.files["int8"])).graph
    last_gemm = max(i for i, n in enumerate(graph.node) if n.op_type == "Gemm")
    tail = graph.node[last_gemm + 1:]
    # the GEMM's output is dequantized once; nothing after it is quantized again
    assert [n.op_type for n in tail if n.op_type == "QuantizeLinear"] == ["QuantizeLinear"]
    assert tail[-1].op_type == "Add" and tail[-1].output[0] == names.PROBS_NAME
    out = make_session(r.files["int8"]).run(None, {names.INPUT_NAME: real_batch(data, 60).numpy()})[0]
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)  # real probabilities, not a uint8 grid
    assert np.unique(out).size > 255
    assert q["accuracy"]["int8_top2_ties"] == 0 and q["accuracy"]["n"] == len(data.y_val)
    assert json.loads((tmp_path / "e" / names.MANIFEST_FILE).read_text())["int8"]["output"] == q["output"]


# ------------------------------------------------------------------------------ baseline identity (hole 4)

FAST = ["--min-time", "0.05", "--min-iters", "5", "--warmup", "2", "--threads", "1", "--batch-sizes", "2"]


def invoke(args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, res.stderr if res.stderr_bytes is not None else ""


def one_line_error(res, err, code=1) -> str:
    assert res.exit_code == code, (res.exit_code, err, res.stdout)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err and "KeyError" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, data):
    """Two different models exported to the same file name, model.onnx (a tiny and a resnet8)."""
    root = tmp_path_factory.mktemp("two")
    out = {}
    for name in ("tiny", "resnet8"):
        ck = make_checkpoint(root / f"{name}.pt", data, model=name)
        out[name] = run_export(ExportOptions(ckpt=str(ck), out=str(root / name), simplify=False),
                               log=lambda s: None, data=data).files["onnx"]
    base = root / "base.json"
    res, err = invoke(["bench", out["tiny"], "--data", SYN, "--json", base, *FAST])
    assert res.exit_code == 0, err
    out["base"] = base
    return out


def test_report_entries_carry_identity_data_and_environment(two_models, data):
    import hashlib

    art = json.loads(two_models["base"].read_text())["artifacts"][0]
    ident = art["identity"]
    assert ident["sha256"] == hashlib.sha256(two_models["tiny"].read_bytes()).hexdigest()
    assert ident["model"] == "tiny" and ident["input_shape"] == [3, 32, 32] and ident["num_classes"] == 10
    assert ident["precision"] == "fp32" and ident["output_kind"] == "logits" and len(ident["classes_sha256"]) == 64
    manifest = json.loads((two_models["tiny"].parent / names.MANIFEST_FILE).read_text())
    assert ident["source_sha256"] == manifest["source"]["sha256"]
    assert art["data"]["spec"] == SYN and art["data"]["split"] == "test" and art["data"]["n"] == len(data.y_test)
    assert len(art["data"]["sha256"]) == 64
    env = art["environment"]
    assert env["cpu_model"] and env["threads"] == 1 and env["backend"] == "ort" and env["backend_version"]
    assert env["ort_allow_spinning"] is True and env["interleaved"] is False


def test_baseline_of_another_model_with_the_same_file_name_is_refused(two_models, tmp_path):
    # the resnet8 export is also called model.onnx: matched by file name, refused by identity
    msg = one_line_error(*invoke(["bench", two_models["resnet8"], "--data", SYN, "--baseline", two_models["base"],
                                  "--json", tmp_path / "r.json", *FAST]))
    assert "refusing to compare" in msg and "model tiny vs resnet8" in msg
    assert not (tmp_path / "r.json").exists()


def test_baseline_scored_on_other_data_is_refused(two_models):
    other = "synthetic:n_train=200,n_test=60,seed=1"  # same spec shape, other images
    msg = one_line_error(*invoke(["bench", two_models["tiny"], "--data", other, "--baseline", two_models["base"],
                                  *FAST]))
    assert "other data than the baseline" in msg and SYN in msg and other in msg


def test_baseline_from_another_environment_is_a_warning(two_models, tmp_path):
    rep = tmp_path / "r.json"
    res, err = invoke(["bench", two_models["tiny"], "--data", SYN, "--baseline", two_models["base"], "--json", rep,
                       "--max-latency-regression", "100000%", *FAST[:-2], "--batch-sizes", "2", "--threads", "2"])
    assert res.exit_code == 0, err
    gate = json.loads(rep.read_text())["gate"]
    assert gate["passed"] and any(d.startswith("threads 1 vs 2") for d in gate["environment_differences"])
    assert "environment differs from the baseline" in err


def _baseline_variants(base: dict) -> dict[str, object]:
    """Broken baselines: foreign JSON, missing pieces, wrong types, a report without identities."""
    import copy

    def edit(fn):
        b = copy.deepcopy(base)
        fn(b)
        return b

    return {
        "a list": [1, 2],
        "a manifest": {"format": "edgekd-manifest", "class_names": ["a"]},
        "no artifacts": edit(lambda b: b.pop("artifacts")),
        "artifact not an object": edit(lambda b: b["artifacts"].__setitem__(0, "model.onnx")),
        "no name": edit(lambda b: b["artifacts"][0].pop("name")),
        "no batch size": edit(lambda b: b["artifacts"][0]["latency"][0].pop("batch_size")),
        "p50 a string": edit(lambda b: b["artifacts"][0]["latency"][0].__setitem__("p50_ms", "fast")),
        "top-1 a string": edit(lambda b: b["artifacts"][0]["accuracy"].__setitem__("top1", "good")),
        "no identity": edit(lambda b: b["artifacts"][0].pop("identity")),
        "bad version": edit(lambda b: b.__setitem__("schema_version", "one")),
    }


def test_malformed_or_foreign_baseline_is_one_line_exit_1(two_models, tmp_path):
    base = json.loads(two_models["base"].read_text())
    expect = {"a list": "not an edgekd bench report", "a manifest": "not an edgekd bench report",
              "no artifacts": "'artifacts' is not a list", "artifact not an object": "artifacts[0] is not an object",
              "no name": "artifacts[0] has no name", "no batch size": "latency[0] has no batch_size",
              "p50 a string": "p50_ms is 'fast'", "top-1 a string": "top1 is 'good'",
              "no identity": "carries no identity", "bad version": "schema_version"}
    variants = _baseline_variants(base)
    assert set(variants) == set(expect)
    not_json = tmp_path / "not.json"
    not_json.write_text("{ this is not json")
    assert "not a JSON bench report" in one_line_error(*invoke(["bench", two_models["tiny"], "--baseline", not_json,
                                                                *FAST]))
    for what, doc in variants.items():
        path = tmp_path / f"{what.replace(' ', '_')}.json"
        path.write_text(json.dumps(doc))
        msg = one_line_error(*invoke(["bench", two_models["tiny"], "--baseline", path, *FAST]))
        assert expect[what] in msg, (what, msg)


# ------------------------------------------------------------------------------ compare statistic (hole 5)


def test_t_quantiles_match_tables():
    from edgekd.bench.compare import t_quantile

    for q, df, want in ((0.975, 5, 2.570582), (0.975, 2, 4.302653), (0.995, 10, 3.169273), (0.975, 30, 2.042272)):
        assert t_quantile(q, df) == pytest.approx(want, abs=1e-5)


def test_interval_over_processes_covers_an_a_a_ratio_that_rounds_alone_miss():
    """Simulated A/A comparisons with a per-process offset (sd 3%) and round noise (sd 1%): a bootstrap
    over one process's rounds excludes 1.0 most of the time; the interval over 6 processes covers it
    about 95% of the time, as it claims."""
    from edgekd.bench.compare import CompareSettings, bootstrap_ratio_ci, summarize_processes

    rng = np.random.default_rng(0)
    settings = CompareSettings(processes=6, rounds=10)
    covered_rounds = covered_process = 0
    trials = 200
    for _ in range(trials):
        per_process = []
        for _p in range(settings.processes):
            offset = rng.normal(0, 0.03)
            a = np.exp(rng.normal(0, 0.01, settings.rounds))
            b = np.exp(offset + rng.normal(0, 0.01, settings.rounds))
            per_process.append({"a_blocks": a, "b_blocks": b, "a_calls": [5], "b_calls": [5], "a_p50_ms": 1.0,
                                "b_p50_ms": 1.0})
        _, lo, hi = bootstrap_ratio_ci(per_process[0]["a_blocks"], per_process[0]["b_blocks"])
        covered_rounds += lo <= 1.0 <= hi
        res = summarize_processes(per_process, settings)
        covered_process += res.ci_low <= 1.0 <= res.ci_high
        assert res.level == "process" and res.processes == 6 and len(res.process_ratios) == 6
    assert covered_rounds / trials < 0.6
    assert 0.9 <= covered_process / trials <= 0.99


def test_compare_in_fresh_processes_catches_2x_and_passes_a_model_against_itself(tmp_path):
    from edgekd.bench.compare import CompareSettings, compare_models
    from tests.test_bench import conv_stack_onnx

    x1, x2 = conv_stack_onnx(tmp_path / "x1.onnx", 6), conv_stack_onnx(tmp_path / "x2.onnx", 12)
    spec = dict(backend="ort", threads=1, allow_spinning=False)
    settings = CompareSettings(processes=3, rounds=6, time_s=0.6, threshold=0.10)
    slow = compare_models({"path": str(x1), **spec}, {"path": str(x2), **spec}, [1], settings)[1]
    assert slow.verdict == "regression" and slow.level == "process" and slow.processes == 3
    assert slow.ci_low > 1.1 and len(slow.round_ratios) == 3 * 6
    same = compare_models({"path": str(x1), **spec}, {"path": str(x1), **spec}, [1], settings)[1]
    assert not same.failed and 0.8 < same.ratio < 1.25
    # a worker's edgekd error comes back as one line
    from edgekd.errors import EdgekdError

    with pytest.raises(EdgekdError, match="model not found"):
        compare_models({"path": str(tmp_path / "none.onnx"), **spec}, {"path": str(x1), **spec}, [1], settings)


def test_cli_compare_inconclusive_is_a_warning_or_exit_4(monkeypatch, tmp_path):
    from edgekd.bench import suite
    from edgekd.bench.compare import CompareResult
    from tests.test_bench import conv_stack_onnx

    x1 = conv_stack_onnx(tmp_path / "x1.onnx", 2)

    def fake(a, b, batch_sizes, settings, log=None):
        return {batch_sizes[0]: CompareResult(ratio=1.08, ci_low=1.01, ci_high=1.16, confidence=0.95, threshold=0.10,
                                              verdict="inconclusive", rounds=10, calls_per_round=(5, 5),
                                              a_p50_ms=1.0, b_p50_ms=1.08, processes=6, level="process")}

    monkeypatch.setattr(suite, "compare_models", fake)
    res, err = invoke(["bench", "compare", x1, x1, "--json", tmp_path / "c.json"])
    assert res.exit_code == 0 and "warning: inconclusive" in err and "--fail-on-inconclusive" in err
    rec = json.loads((tmp_path / "c.json").read_text())
    assert rec["verdict"] == "inconclusive" and rec["passed"] is True
    res, err = invoke(["bench", "compare", x1, x1, "--fail-on-inconclusive"])
    assert res.exit_code == 4 and one_line_error(res, err, 4).startswith("error: inconclusive")


# ------------------------------------------------------------------------------ INT8 slower than FP32 (hole 6)


def test_int8_check_fails_only_when_int8_is_slower_with_confidence(tmp_path):
    """Two conv stacks stand in for the INT8 flavours: a model.int8.onnx twice as costly as its
    model.onnx (as S8S8 on ORT's CPU kernels) fails; one half as costly (as U8S8) passes."""
    from edgekd.bench.compare import CompareSettings
    from edgekd.bench.latency import LatencySettings
    from edgekd.bench.suite import BenchOptions, raise_on_failures, run_bench
    from tests.test_bench import conv_stack_onnx

    check = CompareSettings(processes=3, rounds=6, time_s=0.6, threshold=0.0)
    fast = LatencySettings(warmup_iters=2, min_time_s=0.05, min_iters=5)
    for name, (fp32_layers, int8_layers), slower in (("slow", (6, 12), True), ("fast", (12, 6), False)):
        d = tmp_path / name
        d.mkdir()
        conv_stack_onnx(d / "model.onnx", fp32_layers)
        conv_stack_onnx(d / "model.int8.onnx", int8_layers)
        rep = run_bench(BenchOptions(models=(str(d / "model.int8.onnx"),), threads=1, batch_sizes=(1,), latency=fast,
                                     int8_check=check))
        art = rep["artifacts"][0]
        assert art["precision"] == "int8" and rep["artifacts"][1]["name"] == str(d / "model.onnx")
        row = art["latency"][0]
        assert row["int8_check"]["level"] == "process" and row["int8_check"]["processes"] == 3
        if slower:
            assert row["int8_check"]["verdict"] == "regression" and row["int8_speedup"] < 0.8
            with pytest.raises(GateError, match="INT8 slower than its FP32 source"):
                raise_on_failures(rep)
        else:
            assert row["int8_check"]["verdict"] == "ok" and "failures" not in art
            raise_on_failures(rep)


# ------------------------------------------------------------------------------ the other export gates


def test_graph_check_fails_on_a_graph_that_computes_every_head(data):
    """A naive export of an LSSKD training model (every head computed) leaks the aux weights and
    has extra outputs: the graph check refuses it."""
    from edgekd.config import build_config
    from edgekd.export.onnx import check_graph, count_onnx_params
    from edgekd.surgery.deploy import _AllHeads
    from edgekd.surgery.strip import training_only_parameters
    from edgekd.train.model import build_training_model

    cfg = build_config(overrides=dict(model="tiny", method="lsskd", data=SYN))
    tm = build_training_model(cfg, build_model("tiny", num_classes=10)).eval()
    naive = export_onnx(_AllHeads(tm).eval(), (3, 32, 32), names.LOGITS_NAME)
    plain = export_onnx(tm.student, (3, 32, 32), names.LOGITS_NAME)
    with pytest.raises(GateError, match=r"ONNX graph check failed: outputs are .* weights of training-only"):
        check_graph(naive, names.LOGITS_NAME, training_only_parameters(tm), count_onnx_params(plain))


def test_onnx_checker_refuses_a_broken_graph_in_one_line():
    from edgekd.errors import EdgekdError
    from edgekd.export.onnx import check_onnx

    proto = export_onnx(build_model("tiny").eval(), (3, 32, 32), names.LOGITS_NAME)
    proto.graph.node[0].input[0] = "no_such_tensor"
    with pytest.raises(EdgekdError, match="exported ONNX model failed the checker") as info:
        check_onnx(proto)
    assert "\n" not in str(info.value)


def test_int8_budget_fails_on_non_finite_outputs():
    from edgekd.export.quantize import check_accuracy_budget

    class FakeSession:
        def __init__(self, out):
            self.out = out

        def get_inputs(self):
            return [type("I", (), {"name": names.INPUT_NAME})()]

        def run(self, _names, feeds):
            return [self.out[: len(feeds[names.INPUT_NAME])]]

    y = np.arange(8) % 4
    good = np.eye(4, dtype=np.float32)[y]
    bad = good.copy()
    bad[3] = np.nan  # argmax of a NaN row is 0: without the check it could even "agree"
    x = np.zeros((8, 3, 4, 4), np.float32)
    with pytest.raises(GateError, match=r"not finite on 1 of 8 val images \(INT8 1, FP32 0\)"):
        check_accuracy_budget(FakeSession(good), FakeSession(bad), x, y, max_drop=100.0)
    assert check_accuracy_budget(FakeSession(good), FakeSession(good), x, y, max_drop=0.0)["drop_points"] == 0.0


def test_every_test_named_in_docs_gates_exists():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "gates.md").read_text()
    current, named = None, []
    for m in re.finditer(r"`(test_\w+\.py)?::(test_\w+)`", text):
        current = m.group(1) or current
        named.append((current, m.group(2)))
    assert len(named) >= 25
    missing = [f"{f}::{n}" for f, n in named if f"def {n}(" not in (root / "tests" / f).read_text()]
    assert not missing
