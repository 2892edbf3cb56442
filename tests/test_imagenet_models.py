"""ImageNet-layout zoo models: stages, literature sizes, heads attaching, and torchvision weight mapping.

The torchvision state dicts are built here by hand (torchvision is not a dependency): key names
and shapes written out from torchvision's layout, random values, and a functional reference
forward pass that reads those keys. Loading them into edgekd's modules must give the same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgekd.config import LSSKDConfig
from edgekd.errors import EdgekdError
from edgekd.heads.aux import build_aux_heads
from edgekd.heads.dual import build_kd_head
from edgekd.heads.logit_head import build_logit_head
from edgekd.models import ZOO, build_model, native_size
from edgekd.models.convert import from_torchvision, load_torchvision
from edgekd.models.profile import count_macs, count_params
from edgekd.train.model import TrainingModel

IMAGENET = ("resnet18", "resnet34", "mobilenetv2_224", "mobilenetv3_small")
SIZE = 64  # tests run the 224-px layouts on 64-px inputs (strides are what matters)


@pytest.mark.parametrize("name", IMAGENET)
def test_stages_at_strides_4_to_32(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    assert name in ZOO and native_size(name) == 224
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats, pooled = model.forward_features(x)
        logits = model(x)
    assert [s.stride for s in model.stage_info] == [4, 8, 16, 32]
    for f, info in zip(feats, model.stage_info):
        assert f.shape == (2, info.channels, SIZE // info.stride, SIZE // info.stride)
    assert pooled.shape == (2, model.feature_dim) and logits.shape == (2, 7)
    torch.testing.assert_close(model.head(pooled), logits)


def test_sizes_match_the_papers():
    # 1000 classes at 224 px: ResNet-18 11.7M / 1.82G MACs, ResNet-34 21.8M / 3.67G (He et al. 2016),
    # MobileNetV2 3.5M / 300M (Sandler et al. 2018), MobileNetV3-Small 2.5M / 56M (Howard et al. 2019)
    expect = {"resnet18": (11.69e6, 1.814e9), "resnet34": (21.80e6, 3.664e9),
              "mobilenetv2_224": (3.505e6, 300.8e6), "mobilenetv3_small": (2.543e6, 56.5e6)}
    for name, (params, macs) in expect.items():
        model = build_model(name, num_classes=1000)
        assert count_params(model) == pytest.approx(params, rel=2e-3), name
        assert count_macs(model, (3, 224, 224)) == pytest.approx(macs, rel=2e-3), name


@pytest.mark.parametrize("name", IMAGENET)
def test_lsskd_dho_and_dhkd_heads_attach(name):
    torch.manual_seed(0)
    student = build_model(name, num_classes=5)
    before = set(student.state_dict())
    aux = build_aux_heads(student, LSSKDConfig(branch="light" if name.startswith("resnet") else "hsakd"), 5)
    model = TrainingModel(student, aux_heads=aux, kd_head=build_kd_head(student.feature_dim, 5)).eval()
    dhkd = build_logit_head(student.feature_dim, 5, "mlp").eval()
    assert set(student.state_dict()) == before  # training-only parts stay out of the deployable student
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        heads = model.heads(x)
        _, pooled = student.forward_features(x)
        assert dhkd(pooled).shape == (2, 5)
        probs = model(x)
    assert sorted(k for k in heads if k.startswith("aux")) == ["aux0", "aux1", "aux2"]
    assert all(heads[f"aux{s}"].shape == (2, 20) for s in range(3))
    assert heads["kd"].shape == heads["main"].shape == (2, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


# ---------------------------------------------------------------- torchvision layouts, by hand


class KeyMaker:
    """Random tensors under torchvision's names: convs He-scaled, BN with non-trivial statistics."""

    def __init__(self, seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def rand(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def conv(self, name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        self.sd[f"{name}.weight"] = self.rand(cout, cin, k, k) * (2.0 / (cin * k * k)) ** 0.5
        if bias:
            self.sd[f"{name}.bias"] = 0.1 * self.rand(cout)

    def bn(self, name: str, c: int) -> None:
        self.sd.update({f"{name}.weight": 1 + 0.1 * self.rand(c), f"{name}.bias": 0.1 * self.rand(c),
                        f"{name}.running_mean": 0.1 * self.rand(c),
                        f"{name}.running_var": 1 + 0.2 * self.rand(c).abs(),
                        f"{name}.num_batches_tracked": torch.tensor(100)})

    def linear(self, name: str, cout: int, cin: int) -> None:
        self.sd[f"{name}.weight"] = self.rand(cout, cin) * cin ** -0.5
        self.sd[f"{name}.bias"] = 0.1 * self.rand(cout)


def tv_resnet18(num_classes: int) -> dict:
    k = KeyMaker(1)
    k.conv("conv1", 64, 3, 7)
    k.bn("bn1", 64)
    cin = 64
    for i, w in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            p = f"layer{i}.{b}"
            k.conv(f"{p}.conv1", w, cin if b == 0 else w, 3)
            k.bn(f"{p}.bn1", w)
            k.conv(f"{p}.conv2", w, w, 3)
            k.bn(f"{p}.bn2", w)
            if b == 0 and i > 1:
                k.conv(f"{p}.downsample.0", w, cin, 1)
                k.bn(f"{p}.downsample.1", w)
        cin = w
    k.linear("fc", num_classes, 512)
    return k.sd


def _bn(sd: dict, x: torch.Tensor, name: str, eps: float = 1e-5) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], False, 0.0, eps)


def tv_resnet18_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet-18 forward, written against the state dict."""
    x = F.max_pool2d(F.relu(_bn(sd, F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for i in range(1, 5):
        for b in range(2):
            p, s = f"layer{i}.{b}", 2 if (b == 0 and i > 1) else 1
            out = F.relu(_bn(sd, F.conv2d(x, sd[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn1"))
            out = _bn(sd, F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(sd, F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]


def tv_mobilenet_v2(num_classes: int) -> dict:
    k = KeyMaker(2)
    k.conv("features.0.0", 32, 3, 3)
    k.bn("features.0.1", 32)
    j, cin = 1, 32
    for t, c, n, _ in V2_SETTINGS:
        for _ in range(n):
            p, hidden, i = f"features.{j}.conv", cin * t, 0
            if t != 1:
                k.conv(f"{p}.0.0", hidden, cin, 1)
                k.bn(f"{p}.0.1", hidden)
                i = 1
            k.conv(f"{p}.{i}.0", hidden, 1, 3)  # depthwise: (hidden, 1, 3, 3)
            k.bn(f"{p}.{i}.1", hidden)
            k.conv(f"{p}.{i + 1}", c, hidden, 1)
            k.bn(f"{p}.{i + 2}", c)
            j, cin = j + 1, c
    k.conv("features.18.0", 1280, 320, 1)
    k.bn("features.18.1", 1280)
    k.linear("classifier.1", num_classes, 1280)
    return k.sd


def tv_mobilenet_v2_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's MobileNetV2 forward (eval: dropout off), written against the state dict."""
    def cba(x, name, stride=1, groups=1):
        w = sd[f"{name}.0.weight"]
        return F.relu6(_bn(sd, F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups), f"{name}.1"))

    x = cba(x, "features.0", stride=2)
    j, cin = 1, 32
    for t, c, n, s in V2_SETTINGS:
        for r in range(n):
            p, stride, y, i = f"features.{j}.conv", s if r == 0 else 1, x, 0
            if t != 1:
                y, i = cba(y, f"{p}.0"), 1
            y = cba(y, f"{p}.{i}", stride=stride, groups=y.shape[1])
            y = _bn(sd, F.conv2d(y, sd[f"{p}.{i + 1}.weight"]), f"{p}.{i + 2}")
            x = x + y if stride == 1 and cin == c else y
            j, cin = j + 1, c
    x = cba(x, "features.18")
    return F.linear(x.mean((2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


@pytest.mark.parametrize("arch, make, forward", [("resnet18", tv_resnet18, tv_resnet18_forward),
                                                  ("mobilenetv2_224", tv_mobilenet_v2, tv_mobilenet_v2_forward)])
def test_torchvision_weights_give_torchvisions_logits(arch, make, forward):
    sd = make(10)
    student = build_model(arch, num_classes=10).eval()
    loaded = load_torchvision(student, sd, arch)
    assert len(loaded) == len(sd) == len(student.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(student(x), forward(sd, x), rtol=1e-4, atol=1e-4)


def test_torchvision_mapping_wrappers_heads_and_errors():
    sd = tv_resnet18(1000)  # an ImageNet head onto a 10-class student
    student = build_model("resnet18", num_classes=10)
    with pytest.raises(EdgekdError, match="skip_head=True"):
        load_torchvision(student, sd, "resnet18")
    head_before = student.head.weight.clone()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}  # a DDP checkpoint
    loaded = load_torchvision(student, wrapped, "resnet18", skip_head=True)
    assert not any(k.startswith("head.") for k in loaded)
    assert torch.equal(student.head.weight, head_before)
    assert torch.equal(student.stages[3][1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert torch.equal(student.stages[1][0].shortcut[1].running_var, sd["layer2.0.downsample.1.running_var"])
    with pytest.raises(EdgekdError, match="not in the torchvision resnet18 layout"):
        from_torchvision({**sd, "layer5.0.conv1.weight": torch.zeros(1)}, "resnet18", student)
    with pytest.raises(EdgekdError, match="missing"):
        load_torchvision(student, {k: v for k, v in sd.items() if k != "bn1.weight"}, "resnet18", skip_head=True)
    with pytest.raises(EdgekdError, match="no torchvision mapping"):
        from_torchvision(sd, "wrn_16_2", student)


def test_torchvision_mobilenet_v3_small_keys_map_onto_the_student():
    """Names and shapes of torchvision's MobileNetV3-Small, including its Linear(576, 1024) as a 1x1 conv."""
    k = KeyMaker(4)
    k.conv("features.0.0", 16, 3, 3)
    k.bn("features.0.1", 16)
    blocks = [(16, 3, 16, 16, True, 2), (16, 3, 72, 24, False, 2), (24, 3, 88, 24, False, 1), (24, 5, 96, 40, True, 2),
              (40, 5, 240, 40, True, 1), (40, 5, 240, 40, True, 1), (40, 5, 120, 48, True, 1),
              (48, 5, 144, 48, True, 1), (48, 5, 288, 96, True, 2), (96, 5, 576, 96, True, 1),
              (96, 5, 576, 96, True, 1)]
    for j, (cin, ks, exp, out, se, _) in enumerate(blocks, 1):
        p, i = f"features.{j}.block", 0
        if exp != cin:
            k.conv(f"{p}.0.0", exp, cin, 1)
            k.bn(f"{p}.0.1", exp)
            i = 1
        k.conv(f"{p}.{i}.0", exp, 1, ks)
        k.bn(f"{p}.{i}.1", exp)
        if se:
            sq = max(8, int(exp // 4 + 4) // 8 * 8)
            k.conv(f"{p}.{i + 1}.fc1", sq, exp, 1, bias=True)
            k.conv(f"{p}.{i + 1}.fc2", exp, sq, 1, bias=True)
            i += 1
        k.conv(f"{p}.{i + 1}.0", out, exp, 1)
        k.bn(f"{p}.{i + 1}.1", out)
    k.conv("features.12.0", 576, 96, 1)
    k.bn("features.12.1", 576)
    k.linear("classifier.0", 1024, 576)
    k.linear("classifier.3", 10, 1024)
    student = build_model("mobilenetv3_small", num_classes=10).eval()
    assert len(load_torchvision(student, k.sd, "mobilenetv3_small")) == len(student.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():  # the classifier of torchvision after the pooled last conv
        h = student.stem(x)
        for stage in student.stages:
            h = stage(h)
        pooled = student.neck[:4](h).flatten(1)
        ref = F.linear(F.hardswish(F.linear(pooled, k.sd["classifier.0.weight"], k.sd["classifier.0.bias"])),
                       k.sd["classifier.3.weight"], k.sd["classifier.3.bias"])
        torch.testing.assert_close(student(x), ref, rtol=1e-4, atol=1e-4)
