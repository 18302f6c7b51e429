"""onnxruntime-loop: encoder and the whole K-step loop as ONNX graphs (one session call each per chunk).

Checked against the eager float32 policy: same actions from the same observations and noise (fp32 to
float rounding; DDPM with the per-step noise as a graph input), int8 within the accuracy gate, and the
refusals (non-cpu devices) as one line; the sampler baked into the graph keys the cache.
"""
from __future__ import annotations

import json

import pytest
import torch

from edgedp.compile.api import compile_policy
from edgedp.compile.backends import get_backend
from edgedp.compile.quantize import action_error, synthetic_observations
from edgedp.policy_loading import load_policy
from tests.test_compile_backends import _conds, _one_thread, tiny_policy  # noqa: F401 (autouse fixture)

pytest.importorskip("onnxruntime", reason="onnxruntime (onnx extra) is not installed")
pytest.importorskip("onnx", reason="onnx (onnx extra) is not installed")


@pytest.fixture(scope="module")
def image_policy():
    torch.manual_seed(0)
    return load_policy("preset:small")


def test_image_policy_fp32_equals_eager_from_observation_to_actions(image_policy, tmp_path):
    pol = image_policy
    cs = compile_policy(pol, "onnxruntime-loop", "fp32", 3, "cpu", tmp_path, gate=False).sampler
    ref = get_backend("eager").build(pol, "fp32", 3, torch.device("cpu"), tmp_path)
    assert cs.info["fused_loop"] and cs.encoder is not None
    noise = torch.randn(1, pol.horizon, pol.action_dim, generator=torch.Generator().manual_seed(1))
    for obs in synthetic_observations(pol, 2, seed=4):
        g_ref, g = ref.encode(obs), cs.encode(obs)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cs(g, noise), ref(g_ref, noise), rtol=1e-4, atol=1e-5)
    # the graph really depends on its inputs (not a constant folded at export)
    g = _conds_like(pol)
    assert not torch.allclose(cs(g, noise), cs(g + 1.0, noise))


def _conds_like(pol):
    return torch.randn((1, pol.global_cond_dim), generator=torch.Generator().manual_seed(9))


def test_ddpm_loop_takes_per_step_noise_as_input(tmp_path):
    pol = tiny_policy("ddpm", k=4)
    cs = compile_policy(pol, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path, gate=False).sampler
    ref = get_backend("eager").build(pol, "fp32", 4, torch.device("cpu"), tmp_path)
    assert cs.stochastic
    rmse, worst = action_error(ref, cs, _conds(pol), 4)        # same initial and per-step noise for both
    assert worst < 1e-4, (rmse, worst)


def test_int8_passes_the_gate_and_stores_int8_weights(tmp_path):
    pol = tiny_policy()
    rep = compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path, gate_samples=2)
    assert rep.gate is not None and rep.gate.passed, rep.gate.line()
    unavailable = json.loads((rep.path / "loop_choice.json").read_text()).get("int8_unavailable")
    if unavailable:
        import onnxruntime
        from packaging.version import Version

        # onnxruntime 1.23 (the newest pip offers Python 3.10) cannot quantize the unrolled loop: the build keeps the
        # float32 loop and says why (tests/test_ort_loop_choice.py checks that path on every version).
        if "cannot run an int8 form" in unavailable and Version(onnxruntime.__version__) < Version("1.24"):
            pytest.skip(unavailable)
        pytest.fail(unavailable)
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(rep.path / "loop_int8.onnx"))  # built whichever loop graph the timing keeps
    int8 = sum(numpy_helper.to_array(t).size for t in model.graph.initializer
               if t.data_type in (TensorProto.INT8, TensorProto.UINT8))
    n_weights = sum(p.numel() for n, p in pol.denoiser.named_parameters() if n.endswith("weight"))
    assert int8 >= 0.8 * n_weights, (int8, n_weights)     # one int8 copy of the weights, not one per step
    assert int8 <= 1.2 * n_weights
    choice = rep.sampler.info["encoder_choice"]                 # measured on build, kept in the entry
    assert choice["chosen"] in choice["ms"] and choice["accepted"][choice["chosen"]]
    assert choice["action_error"][choice["chosen"]]["rmse"] <= choice["action_limits"]["rmse"]
    assert ("torch-bf16" in choice["ms"]) is choice["bf16_native"]


def test_bf16_encoder_stays_close_to_float32_features(image_policy):
    from edgedp.compile.ort_loop import TorchBf16Encoder

    enc = TorchBf16Encoder(image_policy)
    for obs in synthetic_observations(image_policy, 2, seed=8):
        ref = image_policy.encode(obs).float()
        got = enc(obs)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 0.02 * float(ref.abs().max())
        assert not torch.equal(got, ref)                         # it really ran in bf16


def test_the_sampler_baked_into_the_graph_is_part_of_the_cache_key(tmp_path):
    """Another sampler kind or warm start / inpainting builds another loop graph: never a stale cache hit. Each
    sampler has its own entry, so switching back finds the first build instead of rebuilding it."""
    pol = tiny_policy()
    first = compile_policy(pol, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path, gate=False)
    assert compile_policy(pol, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path, gate=False).state == "hit"
    pol.configure_sampler("dpmsolver++", warm_start_level=0.5, inpaint="guided")
    try:
        other = compile_policy(pol, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path, gate=False)
        assert other.state == "miss" and (other.path / "loop_warm.onnx").exists()  # built, not reused
        assert compile_policy(pol, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path, gate=False).state == "hit"
        assert first.path != other.path
    finally:
        pol.configure_sampler("ddim")
    again = compile_policy(pol, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path, gate=False)
    assert again.state == "hit" and again.path == first.path and not (again.path / "loop_warm.onnx").exists()


def test_cuda_is_refused_by_name():
    assert "runs on cpu" in get_backend("onnxruntime-loop").unavailable(torch.device("cuda"))
