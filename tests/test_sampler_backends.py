"""Samplers, warm start and inpainting through the compile backends: every backend builds its K-step loop from
the policy's sampler options (make_loop), so the compiled sampler must give what the eager policy gives."""
from __future__ import annotations

import pytest
import torch

from edgedp.compile.backends import get_backend
from models.policy import DiffusionPolicy
from models.spec import NormalizationSpec, PolicySpec, UnetSpec


# Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention, not a speed claim.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_policy(k: int = 4) -> DiffusionPolicy:
    spec = PolicySpec(
        action_dim=2, state_features={"observation.state": [4]}, n_obs_steps=2, horizon=8, n_action_steps=4,
        unet=UnetSpec(down_dims=[32, 64], kernel_size=5, n_groups=8, diffusion_step_embed_dim=16),
        scheduler={"kind": "ddim", "num_inference_steps": k},
        normalization=NormalizationSpec("lerobot", {"observation.state": "min_max", "action": "min_max"}),
    )
    torch.manual_seed(0)
    return DiffusionPolicy(spec, num_inference_steps=k, seed=0).eval()


def _conditioning(policy: DiffusionPolicy, n_fixed: int) -> dict:
    gen = torch.Generator().manual_seed(5)
    prev = 0.6 * torch.rand((1, policy.horizon, policy.action_dim), generator=gen) - 0.3
    return {"init": prev, "prefix": prev, "n_fixed": torch.tensor([n_fixed]), "n_overlap": torch.tensor([7])}


# (backend, precision, tolerance against eager float32 on the free steps)
BACKENDS = [("eager", "fp32", 0.0),
            pytest.param("inductor", "fp32", 1e-4, marks=pytest.mark.slow),  # code generation: minutes on 2 cores
            ("onnxruntime", "fp32", 1e-4), ("onnxruntime-loop", "fp32", 1e-4), ("cpu-int8", "int8", 0.25)]


@pytest.mark.parametrize("backend,precision,tol", BACKENDS)
@pytest.mark.parametrize("kind,form", [("dpmsolver++", "guided"), ("unipc", "replace"), ("ddim", "replace")])
def test_compiled_sampler_does_warm_start_and_inpainting_like_eager(backend, precision, tol, kind, form, tmp_path):
    b = get_backend(backend)
    reason = b.unavailable(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    if backend == "inductor" and kind != "dpmsolver++":
        pytest.skip("inductor compiles the same denoiser for every kind: one kind keeps the suite short")
    policy = tiny_policy(6)
    policy.configure_sampler(kind, warm_start_level=0.5, inpaint=form)
    cs = b.build(policy, precision, 6, torch.device("cpu"), tmp_path / "entry")
    g = torch.randn((1, policy.global_cond_dim), generator=torch.Generator().manual_seed(1))
    noise = policy.random_noise(1)
    for n_fixed in (0, 3):
        cond = _conditioning(policy, n_fixed)
        with torch.inference_mode():
            want = policy.sample(g, noise, **cond)
            got = cs(g, noise, **cond)
        assert got.shape == want.shape
        torch.testing.assert_close(got[:, :n_fixed], cond["prefix"][:, :n_fixed], rtol=0, atol=1e-5)
        assert float((got - want).abs().max()) <= tol + 1e-6, f"{backend} {kind} n_fixed={n_fixed}"
    loop = getattr(cs.loop, "loop", cs.loop)  # onnxruntime-loop keeps its eager twin beside the graphs
    assert loop.warm_start == 3 and loop.inpaint == form and loop.spec.kind == kind


def test_configure_sampler_rejects_a_k_the_kind_cannot_do_and_keeps_the_old_one():
    policy = tiny_policy(100)
    with pytest.raises(ValueError, match="repeats"):
        policy.configure_sampler("dpmsolver++")  # 'leading' spacing: at most K = 99
    assert policy.scheduler_spec.kind == "ddim" and policy.sampler.num_steps == 100
    policy.set_num_inference_steps(4)
    policy.configure_sampler("unipc", warm_start_level=0.5)
    assert policy.sampler.multistep and policy.sampler_options == {"warm_start_level": 0.5}
    policy.configure_sampler(None)  # options are replaced, the kind stays
    assert policy.sampler_options == {} and policy.scheduler_spec.kind == "unipc"
