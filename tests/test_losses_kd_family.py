"""DHKD's binary KL losses, DKD, logit standardization, DHO's official KD reduction and gradient alignment,
against golden values from independent float64 numpy references of the official formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError, EdgekdError
from edgekd.heads.logit_head import build_logit_head
from edgekd.losses.dhkd import binary_kl, binary_kl_norm, dhkd_loss
from edgekd.losses.dho import dho_loss, distill_kl, split_distill_kl
from edgekd.losses.dkd import dkd_loss, dkd_terms, dkd_warmup_factor
from edgekd.losses.grad_align import aligned_backward, project_conflicting
from edgekd.losses.kd import kd_loss, standardize_logits
from edgekd.losses.lsskd import lsskd_loss_terms, marginalize_rotations, view_class_logits


def _pair(seed: int = 0, n: int = 5, c: int = 7, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randn(n, c, generator=g) * scale


# ---------------------------------------------------------------- numpy references (float64)

def _np_logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _np_binary_kl_norm_official(s: np.ndarray, t: np.ndarray, temp: float, eps: float = 1e-8) -> float:
    """The official BinaryKLNorm expression, literally, in float64 (where 1 - 1e-8 is representable)."""
    d = np.clip(_np_sigmoid((s - t) / temp), eps, 1 - eps)
    elem = 0.5 * (np.log(0.5) - np.log(d)) + 0.5 * (np.log(0.5) - np.log(1 - d))
    return temp ** 2 * elem.sum() / s.shape[0]


def _np_dkd_official(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, temp: float) -> float:
    """mdistiller's dkd_loss, literally (the -1000 target mask, log of the summed probabilities), in float64."""
    n, c = s.shape
    gt = np.zeros((n, c))
    gt[np.arange(n), y] = 1.0
    ps, pt = _np_softmax(s / temp), _np_softmax(t / temp)
    bs = np.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = np.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum() * temp ** 2 / n
    qt = _np_softmax(t / temp - 1000.0 * gt)
    log_qs = s / temp - 1000.0 * gt
    log_qs = log_qs - _np_logsumexp(log_qs)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(qt > 0, qt * (np.log(qt) - log_qs), 0.0)
    nckd = terms.sum() * temp ** 2 / n
    return alpha * tckd + beta * nckd


def _np_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    pt = _np_softmax(t / temp)
    log_ps = s / temp - _np_logsumexp(s / temp)[:, None]
    return float((pt * (np.log(pt) - log_ps)).sum(1).mean() * temp ** 2)


# ---------------------------------------------------------------- DHKD: BinaryKLNorm and BinaryKL

def test_binary_kl_norm_hand_value():
    # s - t = [2, 0], T = 2: T^2 * [log cosh(0.5) + log cosh(0)] / 1 = 4 log cosh(0.5) = 0.480458...
    got = binary_kl_norm(torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2), 2.0)
    assert got.item() == pytest.approx(4 * math.log(math.cosh(0.5)), rel=1e-6)
    assert 4 * math.log(math.cosh(0.5)) == pytest.approx(0.480458, abs=1e-6)
    assert binary_kl_norm(torch.ones(3, 4), torch.ones(3, 4), 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_binary_kl_norm_equals_the_log_cosh_closed_form(temp):
    s, t = _pair(1)
    x = (s.double() - t.double()).numpy()
    closed = temp ** 2 / s.shape[0] * np.log(np.cosh(x / (2 * temp))).sum()
    assert binary_kl_norm(s, t, temp).item() == pytest.approx(closed, rel=1e-5)
    assert binary_kl_norm(s, t, temp).item() == pytest.approx(_np_binary_kl_norm_official(s.numpy(), t.numpy(), temp),
                                                              rel=1e-5)


def test_binary_kl_norm_saturates_like_the_official_clamp_and_stays_finite():
    # gaps of 100 T and 40 T: the clamp is active; the official float64 value is a constant per element
    s = torch.tensor([[200.0, -80.0, 1.0]])
    t = torch.zeros(1, 3)
    want = _np_binary_kl_norm_official(s.numpy().astype(np.float64), t.numpy().astype(np.float64), 2.0)
    got = binary_kl_norm(s, t, 2.0)
    assert math.isfinite(got.item()) and got.item() == pytest.approx(want, rel=1e-5)
    # the literal official expression in float32 is inf here (1 - 1e-8 rounds to 1.0)
    d = torch.clamp(torch.sigmoid(s / 2), 1e-8, 1 - 1e-8)
    assert torch.isinf(-torch.log(1 - d)).any()
    s.requires_grad_(True)
    binary_kl_norm(s, t, 2.0).backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 0] == 0.0  # saturated: no gradient, as the clamp gives


def test_binary_losses_compute_in_float32_under_low_precision_inputs():
    s, t = _pair(2, scale=20.0)
    for dtype in (torch.bfloat16, torch.float16):
        s_lp, t_lp = s.to(dtype), t.to(dtype)
        for fn in (binary_kl_norm, binary_kl):
            got = fn(s_lp, t_lp, 2.0)
            assert got.dtype == torch.float32 and torch.isfinite(got)
            assert got.item() == pytest.approx(fn(s_lp.float(), t_lp.float(), 2.0).item(), rel=1e-6)


def test_binary_kl_equals_its_closed_form():
    # KL(Bern(sig a) || Bern(sig b)) = softplus(b) - softplus(a) + sig(a) (a - b), a = t/T, b = s/T
    s, t = _pair(3)
    for temp in (1.0, 2.0):
        a, b = t.double().numpy() / temp, s.double().numpy() / temp
        closed = (np.logaddexp(0, b) - np.logaddexp(0, a) + _np_sigmoid(a) * (a - b)).sum() * temp ** 2 / s.shape[0]
        assert binary_kl(s, t, temp).item() == pytest.approx(closed, rel=1e-5)
    assert binary_kl(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-5)


def test_dhkd_loss_routes_ce_to_the_main_head_and_kd_to_the_aux_head():
    s, t = _pair(4)
    main = s.clone().requires_grad_(True)
    aux = (s * 0.5).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4])
    terms = dhkd_loss(main, aux, y, t, gamma=1.0, alpha=0.1, temperature=2.0)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.1 * binary_kl_norm(s * 0.5, t, 2.0).item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(terms["ce"].item() + terms["kd"].item(), rel=1e-6)
    terms["kd"].backward(retain_graph=True)
    assert main.grad is None and aux.grad.abs().sum() > 0
    aux.grad = None
    terms["ce"].backward()
    assert aux.grad is None and main.grad.abs().sum() > 0
    plain = dhkd_loss(main, aux, y, t, loss="binary_kl")
    assert plain["kd"].item() == pytest.approx(binary_kl(s * 0.5, t, 2.0).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="dhkd.loss"):
        dhkd_loss(main, aux, y, t, loss="kl")


# ---------------------------------------------------------------- DHKD heads

def test_logit_heads_match_the_official_forms():
    lin = build_logit_head(16, 5, "linear")
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (16, 5)
    mlp = build_logit_head(16, 5, "mlp")
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.Dropout, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp[0].out_features == 200 and mlp[1].p == 0.1 and mlp[2].num_features == 200 and mlp[4].out_features == 5
    assert mlp(torch.randn(4, 16)).shape == (4, 5)
    with pytest.raises(ConfigError, match="dhkd.head"):
        build_logit_head(16, 5, "deep")


# ---------------------------------------------------------------- DKD

def test_dkd_hand_values():
    # C = 3, label 0, T = 1; teacher [ln 2, 0, 0] -> p_t = [1/2, 1/4, 1/4]; student uniform [1/3]*3
    # TCKD = KL([1/2, 1/2] || [1/3, 2/3]); NCKD = KL([1/2, 1/2] || [1/2, 1/2]) = 0
    s, t, y = torch.zeros(1, 3), torch.tensor([[math.log(2.0), 0.0, 0.0]]), torch.tensor([0])
    tckd, nckd = dkd_terms(s, t, y, 1.0)
    want = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    assert tckd.item() == pytest.approx(want, abs=1e-6) and nckd.item() == pytest.approx(0.0, abs=1e-6)
    assert want == pytest.approx(0.058892, abs=1e-6)
    # teacher [0, ln 3, 0] with label 0: non-targets [3/4, 1/4] vs uniform [1/2, 1/2]
    _, nckd = dkd_terms(s, torch.tensor([[0.0, math.log(3.0), 0.0]]), y, 1.0)
    assert nckd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_matches_the_official_formula(temp):
    s, t = _pair(5, n=6, c=10)
    y = torch.tensor([0, 3, 9, 2, 2, 7])
    want = _np_dkd_official(s.double().numpy(), t.double().numpy(), y.numpy(), 1.0, 8.0, temp)
    assert dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=temp).item() == pytest.approx(want, rel=1e-5)
    assert dkd_loss(s, t, y, temperature=temp, warmup=0.25).item() == pytest.approx(0.25 * want, rel=1e-5)


def test_dkd_decomposes_classical_kd():
    # the paper's identity, per sample: KD = TCKD + (1 - p_t(y)) * NCKD
    s, t = _pair(6, n=1, c=6)
    y = torch.tensor([2])
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    p_gt = torch.softmax(t / 4.0, 1)[0, 2].item()
    assert kd_loss(s, t, 4.0).item() == pytest.approx(tckd.item() + (1 - p_gt) * nckd.item(), rel=1e-5)


def test_dkd_is_finite_with_a_confident_teacher_and_gradients_reach_only_the_student():
    s = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[80.0, -80.0, 0.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_warmup_factor_is_the_official_schedule_as_a_fraction():
    assert dkd_warmup_factor(0, 240) == pytest.approx(1 / 20)  # official: min(epoch / 20, 1), epoch 1
    assert dkd_warmup_factor(9, 240) == pytest.approx(0.5)
    assert dkd_warmup_factor(19, 240) == 1.0 and dkd_warmup_factor(200, 240) == 1.0
    assert dkd_warmup_factor(0, 12) == pytest.approx(1.0)  # 1/12 of 12 epochs = 1 epoch
    assert dkd_warmup_factor(0, 10, 0.0) == 1.0
    assert dkd_warmup_factor(1, 10, 0.5) == pytest.approx(0.4)


# ---------------------------------------------------------------- logit standardization

def test_standardize_logits_is_the_official_z_score():
    s, _ = _pair(7)
    ref = s.double().numpy()
    ref = (ref - ref.mean(1, keepdims=True)) / (1e-7 + ref.std(1, ddof=1, keepdims=True))
    np.testing.assert_allclose(standardize_logits(s).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_kd_with_logit_standardization_ignores_logit_scale_and_shift():
    s, t = _pair(8)
    ref_s = (s.double().numpy() - s.double().numpy().mean(1, keepdims=True)) / (
        1e-7 + s.double().numpy().std(1, ddof=1, keepdims=True))
    ref_t = (t.double().numpy() - t.double().numpy().mean(1, keepdims=True)) / (
        1e-7 + t.double().numpy().std(1, ddof=1, keepdims=True))
    got = kd_loss(s, t, 2.0, standardize=True).item()
    assert got == pytest.approx(_np_kd(ref_s, ref_t, 2.0), rel=1e-5)
    assert kd_loss(3 * s + 1, 0.5 * t - 2, 2.0, standardize=True).item() == pytest.approx(got, rel=1e-4)
    assert kd_loss(s, t, 2.0).item() == pytest.approx(_np_kd(s.double().numpy(), t.double().numpy(), 2.0), rel=1e-5)
    y = torch.tensor([0, 1, 2, 3, 4])
    want = _np_dkd_official(ref_s, ref_t, y.numpy(), 1.0, 8.0, 4.0)
    assert dkd_loss(s, t, y, standardize=True).item() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- DHO: official KD reduction

def test_dho_split_reduction_is_labeled_mean_plus_unlabeled_mean():
    s, t = _pair(9, n=6, c=4)
    labeled = torch.tensor([True, True, False, False, False, False])
    y = torch.tensor([0, 1, -1, -1, -1, -1])
    sn, tn = s.double().numpy(), t.double().numpy()
    want_kd = _np_kd(sn[:2], tn[:2], 2.0) + _np_kd(sn[2:], tn[2:], 2.0)
    assert split_distill_kl(s, t, labeled, 2.0).item() == pytest.approx(want_kd, rel=1e-5)
    loss, parts = dho_loss(s, s, y, labeled, t, temperature=2.0, kd_reduction="split")
    ce = torch.nn.functional.cross_entropy(s[:2], y[:2]).item()
    assert parts["kd"] == pytest.approx(want_kd, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * ce + 0.5 * want_kd, rel=1e-5)  # the official 0.5 CE + 0.5 (KL_l + KL_u)
    # equal halves: the split form is twice the one-mean form
    half = torch.tensor([True] * 3 + [False] * 3)
    lo = (distill_kl(s[:3], t[:3], 2.0) + distill_kl(s[3:], t[3:], 2.0)).item()
    assert split_distill_kl(s, t, half, 2.0).item() == pytest.approx(lo, rel=1e-6)
    all_lab = torch.ones(6, dtype=torch.bool)
    assert split_distill_kl(s, t, all_lab, 2.0).item() == pytest.approx(distill_kl(s, t, 2.0).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="kd_reduction"):
        dho_loss(s, s, y, labeled, t, kd_reduction="sum")


# ---------------------------------------------------------------- gradient alignment

def test_project_conflicting_hand_values():
    g_ce = torch.tensor([1.0, 0.0])
    merged, conflict = project_conflicting(g_ce, torch.tensor([-1.0, 1.0]))  # <g_kd, g_ce> = -1
    assert conflict and torch.equal(merged, torch.tensor([1.0, 1.0]))  # g_kd' = [0, 1]
    merged, conflict = project_conflicting(g_ce, torch.tensor([1.0, 1.0]))
    assert not conflict and torch.equal(merged, torch.tensor([2.0, 1.0]))
    merged, conflict = project_conflicting(torch.zeros(2), torch.tensor([-1.0, 1.0]))
    assert not conflict and torch.equal(merged, torch.tensor([-1.0, 1.0]))


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.main = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        f = torch.relu(self.body(x))
        return self.main(f), self.aux(f)


def _losses(model: _TwoHeads, seed: int):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g) * 3
    y = torch.randint(0, 3, (8,), generator=g)
    main, aux = model(x)
    terms = dhkd_loss(main, aux, y, t, alpha=5.0)
    return terms["ce"], terms["kd"]


def _official_aligned_grads(model: nn.Module, ce: torch.Tensor, kd: torch.Tensor) -> list[torch.Tensor]:
    """The official OptimGradAlign procedure: backward each objective into .grad, flatten, project, sum."""
    params = list(model.parameters())
    flat = []
    for obj in (ce, kd):
        for p in params:
            p.grad = None
        obj.backward(retain_graph=True)
        flat.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad.clone()).flatten() for p in params]))
    g0, g1 = flat
    dot = torch.dot(g1, g0)
    g1 = g1 - dot * g0 / g0.norm() ** 2 if dot < 0 else g1
    merged = g0 + g1
    out, i = [], 0
    for p in params:
        out.append(merged[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


def test_aligned_backward_matches_the_official_procedure():
    torch.manual_seed(0)
    model = _TwoHeads()
    conflicted = 0
    for seed in range(6):
        want = _official_aligned_grads(model, *_losses(model, seed))
        for p in model.parameters():
            p.grad = None
        stats = aligned_backward(*_losses(model, seed), list(model.parameters()))
        conflicted += int(stats["conflict"])
        for p, w in zip(model.parameters(), want):
            torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)
        assert torch.equal(model.unused.weight.grad, torch.zeros(2, 2))  # reached by neither: zero, as official
    assert conflicted > 0  # the projection was exercised


def test_aligned_backward_is_linear_in_a_common_loss_scale():
    torch.manual_seed(2)
    model = _TwoHeads()
    params = list(model.parameters())
    aligned_backward(*_losses(model, 3), params)
    plain = [p.grad.clone() for p in params]
    ce, kd = _losses(model, 3)
    aligned_backward(ce * 1024.0, kd * 1024.0, params)  # what an fp16 loss scaler hands the hook
    for p, g in zip(params, plain):
        torch.testing.assert_close(p.grad, g * 1024.0, rtol=1e-5, atol=1e-6)


def test_aligned_backward_all_reduces_before_projecting():
    torch.manual_seed(1)
    model = _TwoHeads()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    other = torch.randn(n) * 10  # another process's gradient: the average differs from this process's own
    stats = aligned_backward(*_losses(model, 0), params, all_reduce=lambda g: (g + other) / 2)
    got = torch.cat([p.grad.flatten() for p in params])
    ce, kd = _losses(model, 0)
    g_ce = torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(params, torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True))])
    g_kd = torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(params, torch.autograd.grad(kd, params, allow_unused=True))])
    want, _ = project_conflicting((g_ce + other) / 2, (g_kd + other) / 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert -1.0 <= stats["cos"] <= 1.0


# ---------------------------------------------------------------- LSSKD: HSAKD's main-head form

def test_view_class_logits_picks_each_rows_own_rotation():
    # N = 1, C = 2: row k (rotation k) reads joint columns 4c + k
    z = torch.arange(32, dtype=torch.float32).reshape(4, 8)
    want = torch.tensor([[0.0, 4.0], [9.0, 13.0], [18.0, 22.0], [27.0, 31.0]])
    assert torch.equal(view_class_logits(z, 2), want)
    torch.testing.assert_close(view_class_logits(z, 2).mean(0, keepdim=True), marginalize_rotations(z, 2))


def test_lsskd_hsakd_main_rows_ce_on_upright_and_kd_on_every_view():
    g = torch.Generator().manual_seed(10)
    main_all = torch.randn(8, 3, generator=g)  # N = 2 images x 4 rotations, C = 3
    aux = {0: torch.randn(8, 12, generator=g), 1: torch.randn(8, 12, generator=g)}
    y = torch.tensor([2, 0])
    terms = lsskd_loss_terms(main_all, aux, y, temperature=3.0, main_rows="all")
    ce = torch.nn.functional.cross_entropy(main_all[0::4].double(), y).item()
    views = [np.stack([a.numpy()[r, [4 * c + r % 4 for c in range(3)]] for r in range(8)]) for a in aux.values()]
    target = np.mean(views, axis=0)
    assert terms["main_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["ensemble_kd"].item() == pytest.approx(_np_kd(main_all.double().numpy(), target, 3.0), rel=1e-5)
    upright = lsskd_loss_terms(main_all[0::4], aux, y, temperature=3.0)  # edgekd's form: unchanged
    assert upright["main_ce"].item() == pytest.approx(ce, rel=1e-5)
    with pytest.raises(EdgekdError, match="main-head rows"):
        lsskd_loss_terms(main_all, aux, y, main_rows="rotated")
