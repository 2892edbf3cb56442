"""Loss functions against golden values computed by hand (closed forms in `math`) on fixed tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.errors import EdgekdError
from edgekd.losses.kd import kd_loss, soft_cross_entropy
from edgekd.losses.lsskd import layer_pairs, lsskd_loss_terms, marginalize_rotations
from edgekd.losses.pskd import pskd_alpha, pskd_loss, pskd_targets

LN3 = math.log(3.0)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_kd_loss_golden_t1():
    # teacher [ln3, 0] -> p = [3/4, 1/4]; student [0, 0] -> q = [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812...
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[LN3, 0.0]])
    assert kd_loss(s, t, 1.0).item() == pytest.approx(0.1308120, abs=1e-6)
    assert kd_loss(t, t, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_golden_temperature_and_batchmean():
    # T = 2: p = softmax([ln3/2, 0]) = [sqrt3, 1] / (sqrt3 + 1); loss = T^2 * KL(p || [1/2, 1/2])
    r3 = math.sqrt(3.0)
    p = [r3 / (r3 + 1), 1 / (r3 + 1)]
    row = 4.0 * _kl(p, [0.5, 0.5])
    s = torch.zeros(2, 2)
    t = torch.tensor([[LN3, 0.0], [0.0, 0.0]])  # second row contributes 0; batchmean halves the sum
    assert kd_loss(s, t, 2.0).item() == pytest.approx(row / 2, rel=1e-5)
    assert row / 2 == pytest.approx(0.07268, abs=1e-5)  # the hand value itself, to 4 digits


def test_kd_loss_teacher_gets_gradient_only_if_not_detached():
    s = torch.zeros(1, 3, requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    kd_loss(s, t.detach(), 3.0).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_soft_cross_entropy_golden():
    # logits [ln3, 0] -> log p = [ln 3/4, ln 1/4]; target [0.6, 0.4]
    # CE = -(0.6 ln 0.75 + 0.4 ln 0.25) = 0.727127...
    got = soft_cross_entropy(torch.tensor([[LN3, 0.0]]), torch.tensor([[0.6, 0.4]]))
    assert got.item() == pytest.approx(0.7271272, abs=1e-6)
    onehot = soft_cross_entropy(torch.tensor([[LN3, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert onehot.item() == pytest.approx(F.cross_entropy(torch.tensor([[LN3, 0.0]]), torch.tensor([0])).item())


def test_pskd_alpha_schedule():
    assert pskd_alpha(0, 10, 0.8) == pytest.approx(0.08)
    assert pskd_alpha(4, 10, 0.8) == pytest.approx(0.4)
    assert pskd_alpha(9, 10, 0.8) == pytest.approx(0.8)  # a_T at the last epoch


def test_pskd_targets_and_loss_golden():
    labels = torch.tensor([0, 1])
    prev = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float16)  # exact in fp16
    seen = torch.tensor([True, False])
    tgt = pskd_targets(labels, prev, 0.5, seen)
    # row 0: 0.5*[1,0] + 0.5*[0.25,0.75] = [0.625, 0.375]; row 1 unseen: plain one-hot [0, 1]
    torch.testing.assert_close(tgt, torch.tensor([[0.625, 0.375], [0.0, 1.0]]))
    logits = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    # row 0: -(0.625 ln 3/4 + 0.375 ln 1/4) = 0.699662; row 1: -ln(1/4) = ln 4
    want = (0.6996617 + math.log(4.0)) / 2
    assert pskd_loss(logits, labels, prev, 0.5, seen).item() == pytest.approx(want, abs=1e-5)


def test_layer_pairs():
    assert layer_pairs([2, 0, 1], "adjacent") == [(0, 1), (1, 2)]
    assert layer_pairs([0, 1, 2], "deepest") == [(0, 2), (1, 2)]
    assert layer_pairs([0], "adjacent") == []
    with pytest.raises(EdgekdError, match="pairing"):
        layer_pairs([0, 1], "sideways")


def test_marginalize_rotations_picks_known_rotation_entries():
    # N = 1, C = 2: 4 rows (rotations k), 8 joint columns (4c + k); put k-specific values on (k, 4c + k)
    z = torch.full((4, 8), -100.0)
    for k in range(4):
        z[k, 0 * 4 + k] = float(k)  # class 0 at rotation k
        z[k, 1 * 4 + k] = 10.0 * k  # class 1 at rotation k
    got = marginalize_rotations(z, 2)
    torch.testing.assert_close(got, torch.tensor([[1.5, 15.0]]))  # means of 0..3 and 0,10,20,30


def test_lsskd_terms_golden():
    """N = 1, C = 2, label 0, aux heads at stages 0 (all-zero logits) and 1 (ln 7 on the true joint label).

    - main_ce: logits [ln3, 0], label 0 -> ln(4/3)
    - aux_ce: stage 0 uniform over 8 -> ln 8; stage 1: p(true) = 7 / (7 + 7) -> ln 2; sum 4 ln 2
    - layer_kd (adjacent: 1 teaches 0, T = 3): each row p = [7^(1/3) at the true label, 1 elsewhere] / (7^(1/3) + 7),
      T^2 * KL(p || uniform 1/8), identical for the 4 rows
    - ensemble_kd: marginalised logits stage 0 -> [0, 0], stage 1 -> [ln7, 0]; mean [ln7/2, 0];
      p = [7^(1/6), 1] / (7^(1/6) + 1); main q = softmax([ln3, 0] / 3) = [3^(1/3), 1] / (3^(1/3) + 1)
    """
    a = math.log(7.0)
    z0 = torch.zeros(4, 8)
    z1 = torch.zeros(4, 8)
    for k in range(4):
        z1[k, k] = a  # joint label 4*0 + k
    main = torch.tensor([[LN3, 0.0]])
    terms = lsskd_loss_terms(main, {0: z0, 1: z1}, torch.tensor([0]), temperature=3.0, main_ce_weight=1.0,
                             aux_ce_weight=0.5, layer_kd_weight=2.0, ensemble_kd_weight=3.0, pairing="adjacent")
    c7 = 7 ** (1 / 3)
    p_layer = [c7 / (c7 + 7)] + [1 / (c7 + 7)] * 7
    layer = 9.0 * _kl(p_layer, [1 / 8] * 8)
    c6, c3 = 7 ** (1 / 6), 3 ** (1 / 3)
    ens = 9.0 * _kl([c6 / (c6 + 1), 1 / (c6 + 1)], [c3 / (c3 + 1), 1 / (c3 + 1)])
    want = {"main_ce": math.log(4 / 3), "aux_ce": 4 * math.log(2), "layer_kd": layer, "ensemble_kd": ens}
    for key, value in want.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key  # float32 KL of near-equal p, q
    total = want["main_ce"] + 0.5 * want["aux_ce"] + 2.0 * layer + 3.0 * ens
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)
    assert layer == pytest.approx(0.28034, abs=1e-4)  # the hand values themselves
    assert ens == pytest.approx(0.001918, abs=1e-5)


def test_lsskd_layer_kd_teacher_is_detached_and_progressive_target_replaces_ce():
    torch.manual_seed(0)
    z0 = torch.randn(8, 12, requires_grad=True)
    z1 = torch.randn(8, 12, requires_grad=True)
    main = torch.randn(2, 3, requires_grad=True)
    y = torch.tensor([0, 2])
    terms = lsskd_loss_terms(main, {0: z0, 1: z1}, y, main_ce_weight=0.0, aux_ce_weight=0.0,
                             layer_kd_weight=1.0, ensemble_kd_weight=0.0)
    terms["loss"].backward()
    assert z0.grad.abs().sum() > 0 and (z1.grad is None or z1.grad.abs().sum() == 0)
    target = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    soft = lsskd_loss_terms(main, {}, y, main_target=target)
    assert soft["main_ce"].item() == pytest.approx(soft_cross_entropy(main, target).item())
    assert soft["aux_ce"].item() == 0.0 and soft["ensemble_kd"].item() == 0.0
