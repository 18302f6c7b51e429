"""Every backend available here against eager float32, and the int8 layer lowering against torch's layers."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from edgedp.compile.api import compile_policy
from edgedp.compile.backends import get_backend
from edgedp.compile.int8 import QConv1d, QConvTranspose1d, QLinear, quantize_module, weight_bytes
from edgedp.compile.quantize import action_error
from models.policy import DiffusionPolicy
from models.spec import NormalizationSpec, PolicySpec, UnetSpec


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention, not a speed claim."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_policy(kind: str = "ddim", k: int = 4, seed: int = 0) -> DiffusionPolicy:
    """A state-only policy with a 2-level U-Net: every layer type of the real one, milliseconds per step."""
    spec = PolicySpec(
        action_dim=2, state_features={"observation.state": [4]}, n_obs_steps=2, horizon=8, n_action_steps=4,
        unet=UnetSpec(down_dims=[32, 64], kernel_size=5, n_groups=8, diffusion_step_embed_dim=16),
        scheduler={"kind": kind, "num_inference_steps": k},
        normalization=NormalizationSpec("lerobot", {"observation.state": "min_max", "action": "min_max"}),
    )
    torch.manual_seed(seed)
    return DiffusionPolicy(spec, num_inference_steps=k, seed=seed).eval()


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    return tiny_policy()


def _conds(policy, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, policy.global_cond_dim), generator=g)


def test_eager_fp32_is_the_policy_sampler(policy, tmp_path):
    cs = get_backend("eager").build(policy, "fp32", 4, torch.device("cpu"), tmp_path)
    g = _conds(policy, 1)
    x = torch.randn(1, policy.horizon, policy.action_dim)
    with torch.inference_mode():
        want = policy.sample(g, x)
    torch.testing.assert_close(cs(g, x), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("conv", [
    nn.Conv1d(24, 40, 5, padding=2), nn.Conv1d(24, 40, 3, stride=2, padding=1), nn.Conv1d(24, 8, 1),
])
def test_int8_conv1d_matches_float(conv):
    torch.manual_seed(1)
    x = torch.randn(2, 24, 16)
    with torch.inference_mode():
        ref = conv(x)
        out = QConv1d(conv)(x)
    assert out.shape == ref.shape
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.03, rel


def test_int8_convtranspose_and_linear_match_float():
    torch.manual_seed(2)
    up = nn.ConvTranspose1d(32, 32, 4, 2, 1)
    lin = nn.Linear(48, 20)
    x = torch.randn(1, 32, 8)
    y = torch.randn(3, 48)
    with torch.inference_mode():
        ref_up, out_up = up(x), QConvTranspose1d(up)(x)
        ref_lin, out_lin = lin(y), QLinear(lin)(y)
    assert out_up.shape == ref_up.shape == (1, 32, 16)
    assert float((out_up - ref_up).norm() / ref_up.norm()) < 0.03
    assert float((out_lin - ref_lin).norm() / ref_lin.norm()) < 0.03


def test_quantize_module_replaces_every_weighted_layer_and_quarters_bytes(policy):
    unet = copy.deepcopy(policy.unet)
    before = weight_bytes(unet)
    names = quantize_module(unet, skip=["final_conv.1"])
    assert "final_conv.1" not in names and names
    assert not any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)) for n, m in unet.named_modules()
                   if n and n != "final_conv.1")
    assert weight_bytes(unet) < 0.35 * before


def test_cpu_int8_within_gate_of_eager(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 4, torch.device("cpu"), tmp_path)
    cs = get_backend("cpu-int8").build(policy, "int8", 4, torch.device("cpu"), tmp_path / "e")
    rmse, worst = action_error(ref, cs, _conds(policy, 4), 4)
    assert 0 < rmse < 0.02 and worst < 0.1, (rmse, worst)


def test_eager_bf16_within_tolerance(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 4, torch.device("cpu"), tmp_path)
    cs = get_backend("eager").build(policy, "bf16", 4, torch.device("cpu"), tmp_path)
    rmse, _ = action_error(ref, cs, _conds(policy, 2), 4)
    assert 0 < rmse < 0.05


def test_ddpm_policy_same_variance_noise_gives_same_actions(tmp_path):
    p = tiny_policy("ddpm", k=6)
    ref = get_backend("eager").build(p, "fp32", 6, torch.device("cpu"), tmp_path)
    cs = get_backend("cpu-int8").build(p, "int8", 6, torch.device("cpu"), tmp_path / "e")
    assert ref.stochastic
    rmse, _ = action_error(ref, cs, _conds(p, 2), 6)
    assert rmse < 0.05


@pytest.mark.skipif(os.environ.get("EDGEDP_SLOW_TESTS") != "1",
                    reason="inductor's C++ code generation takes 1-2 min on 2 shared cores; set EDGEDP_SLOW_TESTS=1")
def test_inductor_matches_eager(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 2, torch.device("cpu"), tmp_path)
    rep = compile_policy(policy, "inductor", "fp32", 2, "cpu", tmp_path / "cache")
    g = _conds(policy, 1)
    x = torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(rep.sampler(g, x), ref(g, x), rtol=1e-4, atol=1e-4)
    assert (rep.path / "manifest.json").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_eager_cuda_matches_cpu(policy, tmp_path):
    ref = get_backend("eager").build(policy, "fp32", 4, torch.device("cpu"), tmp_path)
    cs = get_backend("eager").build(policy, "fp32", 4, torch.device("cuda"), tmp_path)
    g = _conds(policy, 1)
    x = torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(cs(g, x).cpu(), ref(g, x), rtol=1e-3, atol=1e-3)


def _has_trt() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None


@pytest.mark.skipif(not _has_trt(), reason="TensorRT needs a CUDA GPU and torch-tensorrt; neither is here")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_within_gate_and_reloads(policy, tmp_path, precision):
    rep = compile_policy(policy, "tensorrt", precision, 4, "cuda", tmp_path, gate_samples=2)
    assert rep.gate is not None and rep.gate.passed
    again = compile_policy(policy, "tensorrt", precision, 4, "cuda", tmp_path)
    assert again.state == "hit"
    g = _conds(policy, 1).cuda()
    x = torch.randn(1, policy.horizon, policy.action_dim, device="cuda")
    torch.testing.assert_close(again.sampler(g, x), rep.sampler(g, x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision,limit", [("fp32", 1e-5), ("int8", 0.02)])
def test_onnxruntime_matches_eager(policy, tmp_path, precision, limit):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ref = get_backend("eager").build(policy, "fp32", 4, torch.device("cpu"), tmp_path)
    cs = get_backend("onnxruntime").build(policy, precision, 4, torch.device("cpu"), tmp_path / precision)
    rmse, _ = action_error(ref, cs, _conds(policy, 2), 4)
    assert rmse < limit
    again = get_backend("onnxruntime").load(policy, precision, 4, torch.device("cpu"), tmp_path / precision)
    g = _conds(policy, 1)
    x = torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(again(g, x), cs(g, x), rtol=0, atol=0)


def test_thread_count_is_measured_saved_and_restored(policy, tmp_path):
    from edgedp.compile.base import use_threads

    cs = get_backend("cpu-int8").build(policy, "int8", 4, torch.device("cpu"), tmp_path / "e")
    assert cs.threads in range(1, torch.get_num_threads() + 2)
    assert set(cs.info["threads_ms"]) == {str(c) for c in range(1, torch.get_num_threads() + 1)}
    again = get_backend("cpu-int8").load(policy, "int8", 4, torch.device("cpu"), tmp_path / "e")
    assert again.threads == cs.threads
    before = torch.get_num_threads()
    with use_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
