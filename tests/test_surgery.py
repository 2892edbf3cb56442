"""Surgery: strip is bitwise exact, folds match the training model, the logit gate fires."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.config import LSSKDConfig
from edgekd.data.dataset import load_dataset
from edgekd.errors import EdgekdError, GateError
from edgekd.heads.aux import attach_aux_heads
from edgekd.heads.dual import build_kd_head
from edgekd.models import build_model
from edgekd.models.profile import count_params
from edgekd.names import LOGITS_NAME, PROBS_NAME
from edgekd.surgery import fold_dual_head, make_deploy_module, strip_aux_heads, verify_fold, verify_strip
from edgekd.train.model import TrainingModel

SYN = "synthetic:n_train=200,n_test=60"


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights and BN statistics, so no check can pass on an identity-like model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def make_model(aux: bool = False, dual: bool = False, normalized: bool = False, a: float = 0.6, b: float = 1.5,
               in_channels: int = 3, seed: int = 0) -> TrainingModel:
    student = build_model("tiny", num_classes=10, in_channels=in_channels)
    tm = TrainingModel(student, kd_head=build_kd_head(student.feature_dim, 10, normalized) if dual else None)
    if aux:
        attach_aux_heads(tm, LSSKDConfig(stages=(0, 1)), 10)
    randomize(tm, seed)
    tm.mix_alpha.fill_(a)
    tm.mix_beta.fill_(b)
    return tm.eval()


@pytest.fixture(scope="module")
def real_x() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(SYN)
    x = torch.from_numpy(data.x_val.transpose(0, 3, 1, 2).copy()).float() / 255
    m = torch.tensor(data.mean).view(1, -1, 1, 1)
    s = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x - m) / s, torch.from_numpy(data.y_val.astype(np.int64))


def test_strip_is_bitwise_and_reports_what_was_removed(real_x):
    tm = make_model(aux=True)
    assert len(tm.aux_heads) == 2
    x = torch.cat([real_x[0], torch.randn(8, 3, 32, 32)])
    deploy, report = make_deploy_module(tm, x)
    with torch.no_grad():
        assert torch.equal(deploy(x), tm(x))
    assert type(deploy) is type(tm.student) and not hasattr(deploy, "aux_heads")
    aux_params = sum(count_params(h) for h in tm.aux_heads.values())
    assert report.removed_params == aux_params > 0
    assert report.removed_modules == ["aux_heads.0", "aux_heads.1"]
    assert report.removed_macs > 0 and report.macs_after < report.macs_before
    assert report.checks[0]["max_abs_diff"] == 0.0 and report.checks[0]["atol"] == 0.0
    assert report.output_kind == LOGITS_NAME and report.fold is None
    assert count_params(deploy) == count_params(build_model("tiny"))


def test_strip_check_fails_on_a_changed_student():
    tm = make_model(aux=True)
    student = strip_aux_heads(tm)
    with torch.no_grad():
        student.head.bias.add_(1e-6)
    with pytest.raises(GateError, match="strip"):
        verify_strip(student, tm, torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("a,b", [(0.6, 1.5), (0.0, 0.5), (1.0, 4.0), (0.35, 1.0)])
def test_fold_exact_matches_on_random_and_real_inputs(real_x, a, b):
    tm = make_model(aux=True, dual=True, a=a, b=b)
    deploy, kind = fold_dual_head(tm, strip_aux_heads(tm), "exact")
    assert kind == PROBS_NAME
    # one GEMM of 2C rows: the deploy module has exactly one Linear, twice the classes wide
    linears = [m for m in deploy.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].out_features == 20
    for x in (torch.randn(32, 3, 32, 32) * 2, real_x[0]):
        with torch.no_grad():
            torch.testing.assert_close(deploy(x), tm(x), atol=1e-5, rtol=1e-5)
        verify_fold(deploy, tm, x, "exact")


@pytest.mark.data
def test_fold_exact_on_real_mnist_images():
    from imagedata import mnist_npz

    data = load_dataset(f"npz:{mnist_npz()}")
    x = torch.from_numpy(data.x_test[:256].transpose(0, 3, 1, 2).copy()).float() / 255
    x = (x - data.mean[0]) / data.std[0]
    tm = make_model(dual=True, in_channels=1, a=0.45, b=2.0)
    deploy, report = make_deploy_module(tm, x, fold="exact")
    assert report.checks[1]["max_abs_diff"] <= 1e-5
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), tm(x), atol=1e-5, rtol=1e-5)


def test_fold_ce_and_kd_keep_one_head(real_x):
    tm = make_model(dual=True, a=0.3, b=2.0)
    x = real_x[0]
    with torch.no_grad():
        heads = tm.heads(x)
        ce, _ = fold_dual_head(tm, strip_aux_heads(tm), "ce")
        kd, _ = fold_dual_head(tm, strip_aux_heads(tm), "kd")
        assert torch.equal(ce(x), heads["main"])
        torch.testing.assert_close(kd(x), heads["kd"] / 2.0, atol=1e-5, rtol=1e-5)
    # a = 1 and a = 0 mixes are exactly these heads
    tm1 = make_model(dual=True, a=1.0, b=2.0)
    with torch.no_grad():
        ce1, _ = fold_dual_head(tm1, strip_aux_heads(tm1), "ce")
        torch.testing.assert_close(torch.softmax(ce1(x), 1), tm1(x), atol=1e-6, rtol=1e-5)
    assert count_params(ce) == count_params(kd) == count_params(build_model("tiny"))


def test_fold_logit_gate_fires_below_threshold(real_x):
    # CE head peaked but moderate, KD head much larger: the probability mix (a = 0.6) follows CE,
    # a logit-space mix follows KD, so their top-1 disagree wherever the heads do
    tm = make_model(dual=True, a=0.6, b=1.0)
    with torch.no_grad():
        tm.student.head.weight.mul_(100)
        tm.kd_head.weight.mul_(1000)
    x, y = real_x
    with pytest.raises(GateError, match="agreement"):
        make_deploy_module(tm, x, y, fold="logit", min_agreement=99.0, max_accuracy_drop=100.0)
    # the same fold passes with a threshold below the measured agreement, and reports it
    _, report = make_deploy_module(tm, x, y, fold="logit", min_agreement=0.0, max_accuracy_drop=100.0)
    agreement = report.checks[1]["top1_agreement"]
    assert agreement < 99.0
    assert {"acc_folded", "acc_exact", "acc_delta"} <= set(report.checks[1])


def test_fold_logit_is_exact_when_a_is_one(real_x):
    tm = make_model(dual=True, a=1.0, b=1.25)
    _, report = make_deploy_module(tm, *real_x, fold="logit", min_agreement=100.0, max_accuracy_drop=0.0)
    assert report.checks[1]["top1_agreement"] == 100.0


def test_fold_mode_must_match_the_model():
    with pytest.raises(EdgekdError, match="dual-head"):
        make_deploy_module(make_model(aux=True), torch.randn(2, 3, 32, 32), fold="exact")
    with pytest.raises(EdgekdError, match="unknown fold"):
        make_deploy_module(make_model(dual=True), torch.randn(2, 3, 32, 32), fold="average")
    _, report = make_deploy_module(make_model(dual=True), torch.randn(2, 3, 32, 32))
    assert report.fold == "exact"  # the default for a dual head


def test_normalized_kd_head_exact_fold_or_clear_refusal(real_x):
    tm = make_model(dual=True, normalized=True, a=0.5, b=0.75)
    deploy, report = make_deploy_module(tm, real_x[0], fold="exact")
    with torch.no_grad():
        torch.testing.assert_close(deploy(real_x[0]), tm(real_x[0]), atol=1e-5, rtol=1e-5)
    for mode in ("logit", "kd"):
        with pytest.raises(EdgekdError, match="L2-normalised"):
            fold_dual_head(tm, strip_aux_heads(tm), mode)


def test_exact_fold_check_catches_a_wrong_mix():
    tm = make_model(dual=True, a=0.6, b=1.5)
    deploy, _ = fold_dual_head(tm, strip_aux_heads(tm), "exact")
    deploy.alpha = 0.61
    with pytest.raises(GateError, match="fold exact"):
        verify_fold(deploy, tm, torch.randn(16, 3, 32, 32), "exact")
