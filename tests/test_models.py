"""Model zoo: forward shapes, stage outputs vs stage_info, parameter counts, user modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models import ZOO, ModuleStudent, build_model
from edgekd.models.profile import count_macs, count_params


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_forward_and_stage_info(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats, pooled = model.forward_features(x)
        head_out = model.head(pooled)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    torch.testing.assert_close(head_out, logits)  # forward == head(forward_features pooled)
    assert pooled.shape == (2, model.feature_dim)
    assert len(feats) == len(model.stage_info) >= 2
    for f, info in zip(feats, model.stage_info):
        assert f.shape == (2, info.channels, 32 // info.stride, 32 // info.stride)
    strides = [s.stride for s in model.stage_info]
    assert strides == sorted(strides)


@pytest.mark.parametrize("name", ["tiny", "resnet8", "mobilenetv2"])
def test_grayscale_input(name):
    model = build_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_param_counts_match_the_literature():
    # He et al. 2016 table 6 and the CRD repository: resnet20 0.27M, resnet56 0.85M, wrn_40_2 2.2M
    assert 0.26e6 < count_params(build_model("resnet20")) < 0.28e6
    assert 0.84e6 < count_params(build_model("resnet56")) < 0.87e6
    assert 2.2e6 < count_params(build_model("wrn_40_2")) < 2.3e6
    assert 7.3e6 < count_params(build_model("resnet32x4")) < 7.5e6
    # ResNet-20 is ~41M MACs on 32x32 (commonly quoted as "41M FLOPs")
    assert 40e6 < count_macs(build_model("resnet20"), (3, 32, 32)) < 42e6
    assert count_params(build_model("tiny")) < 50_000


def test_unknown_model_name():
    with pytest.raises(EdgekdError, match="unknown model 'resnet21'"):
        build_model("resnet21")
    assert count_params(build_model("WRN-16-2")) == count_params(build_model("wrn_16_2"))


class UserNet(nn.Module):
    """A user's own network: two named blocks, pooling and a linear classifier."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


def test_module_student_wraps_a_user_module():
    torch.manual_seed(0)
    net = UserNet()
    student = ModuleStudent(net, ["block1", "block2"], "fc")
    assert [(s.channels, s.stride) for s in student.stage_info] == [(8, 2), (16, 4)]
    assert student.feature_dim == 16 and student.num_classes == 5
    x = torch.randn(3, 3, 32, 32)
    feats, pooled = student.forward_features(x)
    assert [f.shape for f in feats] == [(3, 8, 16, 16), (3, 16, 8, 8)]
    torch.testing.assert_close(student.head(pooled), net(x))
    torch.testing.assert_close(student(x), net(x))
    assert student.head is net.fc
    # usable by the training model, including its per-head evaluation
    from edgekd.train.model import TrainingModel

    tm = TrainingModel(student)
    torch.testing.assert_close(tm.heads(x)["main"], net(x))


def test_module_student_errors():
    with pytest.raises(EdgekdError, match="no submodule"):
        ModuleStudent(UserNet(), ["block1", "block9"], "fc")
    with pytest.raises(EdgekdError, match="must be nn.Linear"):
        ModuleStudent(UserNet(), ["block1"], "block2")


# ---------------------------------------------------------------- `edgekd info` (edgekd.info)


def test_info_zoo_lists_every_model_with_params_and_macs():
    from typer.testing import CliRunner

    from edgekd.cli import app
    from edgekd.info import zoo_rows

    res = CliRunner().invoke(app, ["info", "--zoo"])
    assert res.exit_code == 0, res.output
    rows = {r["model"]: r for r in zoo_rows()}
    assert set(rows) == set(ZOO)
    for name in ZOO:
        assert f"| {name} | {rows[name]['params'] / 1e6:.3f}M |" in res.output
    assert rows["resnet20"]["params"] == count_params(build_model("resnet20"))


def test_info_describes_a_checkpoint_and_refuses_other_files(tmp_path):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from edgekd.cli import app
    from edgekd.config import build_config
    from edgekd.train.checkpoint import build_payload, save_checkpoint
    from edgekd.train.model import build_training_model

    cfg = build_config(overrides=dict(model="tiny", method="lsskd", epochs=3, lsskd={"branch": "light"}))
    model = build_training_model(cfg, build_model("tiny", num_classes=4))
    data = SimpleNamespace(spec="synthetic", class_names=["a", "b", "c", "d"], input_shape=(3, 32, 32),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_checkpoint(tmp_path / "best.pt", build_payload(cfg, model, data, epoch=2, val_acc=51.5))
    res = CliRunner().invoke(app, ["info", str(tmp_path)])  # a run directory finds best.pt
    assert res.exit_code == 0, res.output
    deploy, total = count_params(model.student), count_params(model)
    assert total > deploy  # the aux classifiers are training-only parts
    for text in ("model:        tiny", "method:       lsskd", "epoch:        2 / 3", "val acc: 51.50%",
                 "classes:      4: a, b, c, d", f"{deploy:,} deploy (student) / {total:,} with training-only parts"):
        assert text in res.output, (text, res.output)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    bad = CliRunner().invoke(app, ["info", str(tmp_path / "junk.pt")])
    assert bad.exit_code == 1 and bad.output.count("error:") == 1 and "Traceback" not in bad.output
