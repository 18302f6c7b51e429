"""TensorRT backend: which build settings each (torch-tensorrt, TensorRT) stack gets, checked without a GPU.

The engine build itself needs CUDA (tests/test_compile_backends.py skips it here with that reason); the
choice between JetPack 6's weakly typed TensorRT 10.3 and strongly typed TensorRT >= 10.12 / 11 is pure
logic and is pinned here, including the refusal of stacks too old to run.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from edgedp.compile import trt_versions as tv


@pytest.mark.parametrize("text,expected", [
    ("10.3.0.30", (10, 3, 0, 30)), ("2.8.0+cu126", (2, 8, 0)), ("2.10.0a0", (2, 10, 0)), ("11.0", (11, 0)),
])
def test_parse_version(text, expected):
    assert tv.parse_version(text) == expected


def test_parse_version_refuses_garbage():
    with pytest.raises(ValueError):
        tv.parse_version("dev")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_jetpack6_stack_is_weakly_typed_with_enabled_precisions(precision):
    p = tv.plan("2.8.0", "10.3.0.30", precision)
    assert not p.strongly_typed
    assert p.compile_kwargs["use_explicit_typing"] is False
    assert p.compile_kwargs["enabled_precisions"] == ({"fp32", precision} if precision != "fp32" else {"fp32"})
    assert p.needs_modelopt is (precision == "int8")
    assert p.cast_network_to == ("fp16" if precision == "fp16" else "fp32")


@pytest.mark.parametrize("ttrt,trt", [("2.9.0", "10.13.3.9"), ("2.10.0", "11.0.0"), ("2.12.0", "11.2.1")])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_new_stacks_are_strongly_typed_precision_in_the_graph(ttrt, trt, precision):
    p = tv.plan(ttrt, trt, precision)
    assert p.strongly_typed and p.compile_kwargs == {"use_explicit_typing": True}
    assert "enabled_precisions" not in p.compile_kwargs                  # precision comes from the graph
    assert p.cast_network_to == ("fp16" if precision == "fp16" else "fp32")
    assert p.needs_modelopt is (precision == "int8")                     # INT8 only through Q/DQ
    assert ("TensorRT 11" in p.note) is (tv.parse_version(trt)[0] >= 11)


def test_a_compile_without_the_old_keywords_gets_none_of_them():
    p = tv.plan("2.12.0", "11.1.0", "fp16", compile_params=["inputs", "arg_inputs", "min_block_size"])
    assert p.compile_kwargs == {}
    p = tv.plan("2.8.0", "10.3.0", "fp16", compile_params=["arg_inputs", "enabled_precisions"])
    assert p.compile_kwargs == {"enabled_precisions": {"fp32", "fp16"}}


@pytest.mark.parametrize("ttrt,trt,needle", [
    ("2.8.0", "8.6.2", "TensorRT >= 10"), ("2.4.0", "10.1.0", "torch-tensorrt >= 2.8"),
])
def test_too_old_stacks_are_refused_with_the_reason(ttrt, trt, needle):
    assert needle in tv.unsupported_reason(ttrt, trt)
    with pytest.raises(ValueError, match=needle):
        tv.plan(ttrt, trt, "fp16")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bf16"):
        tv.plan("2.8.0", "10.3.0", "bf16")


def test_dtypes_for_the_weakly_typed_keyword():
    assert tv.torch_dtypes({"fp32", "fp16", "int8"}) == {torch.float32, torch.float16, torch.int8}


def test_installed_versions_here():
    found = tv.installed_versions()
    if importlib.util.find_spec("torch_tensorrt") is None:
        assert found is None
    else:
        assert found is not None and all(tv.parse_version(v) for v in found)


def test_backend_module_imports_and_refuses_without_cuda():
    from edgedp.compile.backends import get_backend

    b = get_backend("tensorrt")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the refusal path is not the one taken here")
    reason = b.unavailable(torch.device("cuda"))
    assert reason and "CUDA" in reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: CUDA-graph loop not run")
def test_cuda_graph_loop_replays_the_eager_loop():
    from edgedp.compile.base import make_loop
    from edgedp.compile.tensorrt import CudaGraphLoop
    from edgedp.policy_loading import load_policy

    pol = load_policy("preset:small")
    den = pol.denoiser.to("cuda").eval()
    loop = make_loop(pol, den, 4, torch.device("cuda"))
    x = torch.randn(1, pol.horizon, pol.action_dim, device="cuda")
    g = torch.randn(1, pol.global_cond_dim, device="cuda")
    graph = CudaGraphLoop(loop, torch.zeros_like(x), torch.zeros_like(g), None)
    with torch.inference_mode():
        want = loop(x, g, None)
    torch.testing.assert_close(graph(x, g), want, rtol=1e-4, atol=1e-4)
