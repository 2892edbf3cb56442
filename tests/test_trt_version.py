"""The TensorRT version policy: supported releases, precision path, ONNX file and trtexec flags per release."""

from __future__ import annotations

import types

import pytest

from edgekd.errors import EdgekdError
from edgekd.names import MODEL_FP16_ONNX, MODEL_INT8_ONNX, MODEL_ONNX
from edgekd.runtime.trt_version import (
    FLAGS,
    JETPACK_TENSORRT,
    PIP_SPECIFIER,
    STRONG,
    UnsupportedTensorRTError,
    installed_policy,
    parse_version,
    policy_for,
    policy_for_jetpack,
)


@pytest.mark.parametrize("text,want", [("8.5.2.2", (8, 5)), ("10.3.0", (10, 3)), ("11.4.0.106", (11, 4)),
                                       ("11", (11, 0)), ("v8.6.1", (8, 6)), (None, None), ("dev", None)])
def test_parse_version(text, want):
    assert parse_version(text) == want


# (version, mode, network flags, builder flags per precision, ONNX per precision, trtexec flags per precision)
BRANCHES = [
    ("8.5.2.2", FLAGS, ("EXPLICIT_BATCH",), {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)},
     {"fp32": MODEL_ONNX, "fp16": MODEL_ONNX, "int8": MODEL_INT8_ONNX},
     {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}),
    ("8.6.1", FLAGS, ("EXPLICIT_BATCH",), {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)},
     {"fp32": MODEL_ONNX, "fp16": MODEL_ONNX, "int8": MODEL_INT8_ONNX},
     {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}),
    ("10.3.0", STRONG, ("STRONGLY_TYPED",), {"fp32": (), "fp16": (), "int8": ()},
     {"fp32": MODEL_ONNX, "fp16": MODEL_FP16_ONNX, "int8": MODEL_INT8_ONNX},
     {p: ["--stronglyTyped"] for p in ("fp32", "fp16", "int8")}),
    ("10.13.3.9", STRONG, ("STRONGLY_TYPED",), {"fp32": (), "fp16": (), "int8": ()},
     {"fp32": MODEL_ONNX, "fp16": MODEL_FP16_ONNX, "int8": MODEL_INT8_ONNX},
     {p: ["--stronglyTyped"] for p in ("fp32", "fp16", "int8")}),
    ("11.4.0.106", STRONG, (), {"fp32": (), "fp16": (), "int8": ()},
     {"fp32": MODEL_ONNX, "fp16": MODEL_FP16_ONNX, "int8": MODEL_INT8_ONNX},
     {p: [] for p in ("fp32", "fp16", "int8")}),
]


@pytest.mark.parametrize("version,mode,net_flags,builder,onnx,trtexec", BRANCHES)
def test_each_supported_release_gets_its_path(version, mode, net_flags, builder, onnx, trtexec):
    pol = policy_for(version)
    assert pol.mode == mode and pol.strongly_typed == (mode == STRONG)
    assert pol.network_flags == net_flags
    for precision in ("fp32", "fp16", "int8"):
        assert pol.builder_flags(precision) == builder[precision]
        assert pol.onnx_file(precision) == onnx[precision]
        assert pol.trtexec_precision_args(precision) == trtexec[precision]
    assert version in pol.describe()


@pytest.mark.parametrize("version", ["11.0.0", "11.4.0.106"])
def test_11x_never_uses_a_removed_api(version):
    pol = policy_for(version)
    removed_flags = {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
    for precision in ("fp32", "fp16", "int8"):
        assert not removed_flags & set(pol.builder_flags(precision))
        assert not {"--fp16", "--int8", "--best"} & set(pol.trtexec_precision_args(precision))
    assert "EXPLICIT_BATCH" not in pol.network_flags


@pytest.mark.parametrize("version,words", [
    ("8.4.1.5", ["8.4.1.5", "8.5-8.6", "10.x-11.x", "JetPack 5.1"]),
    ("7.1.3", ["7.1.3", "8.5-8.6"]),
    ("9.2.0.5", ["9.2.0.5", "10.x-11.x", PIP_SPECIFIER]),
    ("12.0.0", ["12.0.0", "10.x-11.x", PIP_SPECIFIER]),
    ("garbage", ["cannot read a TensorRT version"]),
])
def test_unsupported_releases_are_one_line_naming_installed_and_supported(version, words):
    with pytest.raises(UnsupportedTensorRTError) as info:
        policy_for(version)
    msg = str(info.value)
    assert "\n" not in msg and info.value.exit_code == 1
    for w in words:
        assert w in msg, msg


def test_jetpack_mapping():
    assert {k: JETPACK_TENSORRT[k] for k in ("5", "6.0", "6")} == {"5": "8.5.2", "6.0": "8.6.2", "6": "10.3.0"}
    assert policy_for_jetpack("6.2").release == (10, 3) and policy_for_jetpack("5.1").release == (8, 5)
    assert policy_for_jetpack(5).mode == FLAGS and policy_for_jetpack("5").release == (8, 5)
    assert policy_for_jetpack("6.0").mode == FLAGS and policy_for_jetpack("6.0").release == (8, 6)
    assert policy_for_jetpack(6).mode == STRONG and policy_for_jetpack("6").release == (10, 3)
    for bad in (4, "7", "5.0"):
        with pytest.raises(EdgekdError, match=f"--jetpack '?{bad}'?: choose 5"):
            policy_for_jetpack(bad)


def test_installed_policy_reads_the_module_and_refuses_a_stubs_only_package():
    assert installed_policy(types.SimpleNamespace(__version__="10.3.0")).strongly_typed
    # `pip install tensorrt-stubs` alone makes `import tensorrt` a namespace package of .pyi files
    stubs_only = types.ModuleType("tensorrt")
    stubs_only.__path__ = ["/site-packages/tensorrt"]  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedTensorRTError, match="no __version__.*stubs") as info:
        installed_policy(stubs_only)
    assert "/site-packages/tensorrt" in str(info.value)


def test_bad_precision_is_refused():
    with pytest.raises(EdgekdError, match="precision"):
        policy_for("10.3").builder_flags("bf16")


def test_pyproject_extra_matches_the_supported_range():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    extra = re.search(r"^tensorrt = \[(.*)\]", text, re.M)
    assert extra and f'"tensorrt{PIP_SPECIFIER}"' in extra.group(1)
