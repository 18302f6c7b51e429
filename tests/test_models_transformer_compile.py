"""Compile backends on a transformer policy: each against eager float32, and the accuracy gate.

A tiny state-only transformer policy (every layer kind of the real one: packed q/k/v, causal and
memory masks, MLP condition encoder, LayerNorm, GELU) keeps each build to seconds. The U-Net
counterparts live in tests/test_compile_backends.py.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn

from edgedp.compile.api import compile_policy
from edgedp.compile.backends import get_backend
from edgedp.compile.int8 import Int8Gemm
from edgedp.compile.quantize import action_error
from models.policy import DiffusionPolicy
from models.spec import NormalizationSpec, PolicySpec, TransformerSpec
from tests.test_compile_backends import _conds  # the same seeded global conditions

CPU = torch.device("cpu")


# Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention, not a speed claim.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_transformer(kind: str = "ddim", k: int = 4, seed: int = 0, n_cond_layers: int = 0) -> DiffusionPolicy:
    spec = PolicySpec(
        action_dim=2, state_features={"observation.state": [4]}, n_obs_steps=2, horizon=8, n_action_steps=4,
        denoiser="transformer",
        transformer=TransformerSpec(n_layer=2, n_head=4, n_emb=64, n_cond_layers=n_cond_layers, p_drop_attn=0.1),
        scheduler={"kind": kind, "num_inference_steps": k},
        normalization=NormalizationSpec("lerobot", {"observation.state": "min_max", "action": "min_max"}),
    )
    torch.manual_seed(seed)
    p = DiffusionPolicy(spec, num_inference_steps=k, seed=seed)
    with torch.no_grad():  # away from init (all-zero biases, unit LayerNorms) so every parameter matters
        for prm in p.transformer.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    return p.eval()


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    return tiny_transformer()


def test_eager_fp32_is_the_policy_sampler(policy, tmp_path):
    cs = get_backend("eager").build(policy, "fp32", 4, CPU, tmp_path)
    g, x = _conds(policy, 1), torch.randn(1, policy.horizon, policy.action_dim)
    with torch.inference_mode():
        want = policy.sample(g, x)
    torch.testing.assert_close(cs(g, x), want, rtol=0, atol=1e-5)


def test_cpu_int8_quantizes_every_linear_including_qkv_and_passes_the_gate(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 4, CPU, tmp_path)
    cs = get_backend("cpu-int8").build(policy, "int8", 4, CPU, tmp_path / "e")
    den = cs.denoiser.inner
    assert not any(isinstance(m, nn.Linear) for m in den.modules())  # q/k/v projections were split and lowered
    assert sum(isinstance(m, Int8Gemm) for m in den.modules()) >= 2 * (2 * 2 + 2) + 5
    rmse, worst = action_error(ref, cs, _conds(policy, 4), 4)
    assert 0 < rmse < 0.02 and worst < 0.1, (rmse, worst)
    again = get_backend("cpu-int8").load(policy, "int8", 4, CPU, tmp_path / "e")
    g, x = _conds(policy, 1), torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(again(g, x), cs(g, x), rtol=0, atol=0)


def test_compile_policy_gate_passes_for_cpu_int8(tmp_path):
    p = tiny_transformer("ddpm", k=6, seed=1, n_cond_layers=1)
    rep = compile_policy(p, "cpu-int8", "int8", 6, "cpu", tmp_path, gate_samples=2)
    assert rep.gate is not None and rep.gate.passed, rep.gate.line()


@pytest.mark.parametrize("precision,limit", [("fp32", 1e-5), ("int8", 0.02)])
def test_onnxruntime_matches_eager(policy, tmp_path, precision, limit):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ref = get_backend("eager").build(policy, "fp32", 4, CPU, tmp_path)
    cs = get_backend("onnxruntime").build(policy, precision, 4, CPU, tmp_path / precision)
    rmse, _ = action_error(ref, cs, _conds(policy, 2), 4)
    assert rmse < limit, rmse


def test_eager_bf16_within_tolerance(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 4, CPU, tmp_path)
    cs = get_backend("eager").build(policy, "bf16", 4, CPU, tmp_path)
    rmse, _ = action_error(ref, cs, _conds(policy, 2), 4)
    assert 0 < rmse < 0.05


@pytest.mark.slow
def test_inductor_matches_eager(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 2, CPU, tmp_path)
    rep = compile_policy(policy, "inductor", "fp32", 2, "cpu", tmp_path / "cache")
    g, x = _conds(policy, 1), torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(rep.sampler(g, x), ref(g, x), rtol=1e-4, atol=1e-4)


def _has_trt() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None


@pytest.mark.skipif(not _has_trt(), reason="TensorRT needs a CUDA GPU and torch-tensorrt; neither is here")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_within_gate(policy, tmp_path, precision):
    if precision == "int8" and importlib.util.find_spec("modelopt") is None:
        pytest.skip("TensorRT INT8 goes through NVIDIA ModelOpt (nvidia-modelopt), not installed")
    rep = compile_policy(policy, "tensorrt", precision, 4, "cuda", tmp_path, gate_samples=2)
    assert rep.gate is not None and rep.gate.passed, rep.gate.line()


@pytest.mark.skipif(not _has_trt(), reason="TensorRT needs a CUDA GPU and torch-tensorrt; neither is here")
def test_tensorrt_fp32_matches_eager(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 4, CPU, tmp_path)
    rep = compile_policy(policy, "tensorrt", "fp32", 4, "cuda", tmp_path)
    g, x = _conds(policy, 1), torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(rep.sampler(g.cuda(), x.cuda()).cpu(), ref(g, x), rtol=1e-3, atol=1e-3)
