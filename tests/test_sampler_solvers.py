"""DPM-Solver++ and UniPC on the same weights: every step against diffusers' own schedulers, the whole-loop
Sampler against the step-by-step reference, the warm-start suffix against diffusers' custom timesteps, and
the K / spacing limits."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from models.multistep import MultistepScheduler, multistep_table, solver_timesteps
from models.sampler import Sampler, warm_start_index
from models.schedulers import SchedulerSpec, alphas_cumprod, timesteps

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

SPACINGS = ("linspace", "leading", "trailing")
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _reference(kind: str, spec: SchedulerSpec):
    common = dict(num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
                  prediction_type=spec.prediction_type, timestep_spacing=spec.timestep_spacing,
                  steps_offset=spec.steps_offset)
    if kind == "dpmsolver++":
        return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                     solver_type="midpoint", lower_order_final=True, **common)
    return diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True,
                                             lower_order_final=True, **common)


def _step_by_step(kind: str, spec: SchedulerSpec, k: int, seed: int = 0, custom: np.ndarray | None = None) -> float:
    """Feed diffusers and ours the same (sample, model output) at every step; return the worst relative error."""
    ref = _reference(kind, spec)
    if custom is None:
        ref.set_timesteps(k)
        ts = timesteps(spec, k).numpy()
    else:
        ref.set_timesteps(timesteps=custom.tolist())
        ts = custom
    assert np.array_equal(ts, ref.timesteps.numpy()), f"{kind} {spec.timestep_spacing} K={k}: timesteps differ"
    mine = MultistepScheduler(kind, alphas_cumprod(spec), ts, spec.prediction_type, None)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 3, generator=gen)
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=gen)
        want = ref.step(out, t, x).prev_sample
        got = mine.step(out, i, x)
        worst = max(worst, float((got - want).abs().max() / want.abs().max().clamp(min=1e-6)))
        x = want  # both continue from diffusers' sample: every step is checked on its own
    return worst


@pytest.mark.parametrize("kind", ["dpmsolver++", "unipc"])
@pytest.mark.parametrize("spacing,prediction", list(itertools.product(SPACINGS, PREDICTIONS)))
def test_every_step_matches_diffusers(kind, spacing, prediction):
    spec = SchedulerSpec(kind=kind, clip_sample=False, prediction_type=prediction, timestep_spacing=spacing)
    for k in (1, 2, 3, 4, 10, 25, 99):
        assert _step_by_step(kind, spec, k) < 5e-5, f"{kind} {spacing} {prediction} K={k}"


@pytest.mark.parametrize("kind", ["dpmsolver++", "unipc"])
def test_linear_betas_and_1000_steps_match_diffusers(kind):
    spec = SchedulerSpec(kind=kind, num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                         timestep_spacing="trailing")
    for k in (5, 20):
        assert _step_by_step(kind, spec, k, seed=3) < 5e-5


def test_dpmsolver_warm_suffix_matches_diffusers_custom_timesteps():
    """A warm start solves the suffix as its own schedule: diffusers' set_timesteps(timesteps=...) does the same."""
    spec = SchedulerSpec(kind="dpmsolver++", clip_sample=False)
    full = timesteps(spec, 10).numpy()
    for start in (3, 5, 9):
        assert _step_by_step("dpmsolver++", spec, 0, custom=full[start:].copy()) < 5e-5


def test_unipc_is_dpmsolver_plus_a_corrector():
    """UniP-2 with B(h) = e^{-h} - 1 (bh2) is DPM-Solver++(2M) term for term; what UniPC adds is UniC."""
    acp = alphas_cumprod(SchedulerSpec(kind="ddim"))
    ts = solver_timesteps("trailing", 100, 6)
    dpm, uni = multistep_table("dpmsolver++", acp, ts), multistep_table("unipc", acp, ts)
    assert dpm.pred_order == (1, 2, 2, 2, 2, 1) and uni.pred_order == (1, 2, 2, 2, 2, 1)
    assert dpm.corr_order == (0,) * 6 and uni.corr_order == (0, 1, 2, 2, 2, 2)
    torch.testing.assert_close(dpm.pred, uni.pred, rtol=1e-5, atol=1e-6)
    assert uni.corr.abs().sum() > 0 and dpm.corr.abs().sum() == 0
    # the last step lands on the data prediction: x_K = m_{K-1}
    assert torch.allclose(dpm.pred[-1], torch.tensor([0.0, 1.0, 0.0])) and torch.allclose(uni.pred[-1], dpm.pred[-1])


def test_spacing_limits_and_k_100():
    with pytest.raises(ValueError, match="repeats"):
        solver_timesteps("leading", 100, 100)
    with pytest.raises(ValueError, match="repeats"):
        SchedulerSpec(kind="unipc", num_inference_steps=100, timestep_spacing="linspace")
    assert solver_timesteps("trailing", 100, 100).tolist() == list(range(99, -1, -1))
    SchedulerSpec(kind="dpmsolver++", num_inference_steps=99)  # leading allows up to N - 1


def test_from_dict_knows_the_diffusers_class_names():
    assert SchedulerSpec.from_dict({"_class_name": "DPMSolverMultistepScheduler"}).kind == "dpmsolver++"
    assert SchedulerSpec.from_dict({"_class_name": "UniPCMultistepScheduler"}).kind == "unipc"
    with pytest.raises(ValueError, match="eta"):
        SchedulerSpec(kind="unipc", eta=0.5)


class Den(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(0.3 * torch.randn(3, 3, generator=gen))
        self.emb = nn.Parameter(0.1 * torch.randn(100, 1, generator=gen))
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(t, torch.fx.Proxy)):
            self.calls.append(int(t[0]))
        return torch.tanh(x @ self.w + self.emb[t][:, None, :] + cond[:, None, :3])


@pytest.mark.parametrize("kind", ["dpmsolver++", "unipc"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_whole_loop_sampler_equals_step_by_step(kind, prediction):
    spec = SchedulerSpec(kind=kind, prediction_type=prediction, clip_sample=True)
    den = Den()
    sampler = Sampler(den, spec, 7)
    noise = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(2))
    cond = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = sampler(noise, cond)
        ref = MultistepScheduler(kind, alphas_cumprod(spec), timesteps(spec, 7).numpy(), prediction, 1.0)
        x = noise
        for i, t in enumerate(ref.table.timesteps):
            x = ref.step(den(x, t.expand(2), cond), i, x)
    assert torch.equal(got, x)
    assert sampler.num_steps == 7 and not sampler.needs_variance_noise


def test_clip_sample_clamps_the_data_prediction():
    spec = SchedulerSpec(kind="dpmsolver++", prediction_type="sample", clip_sample=True, clip_sample_range=0.5)
    sched = MultistepScheduler("dpmsolver++", alphas_cumprod(spec), np.array([10]), "sample", 0.5)
    x = torch.zeros(1, 4, 2)
    out = sched.step(torch.full_like(x, 3.0), 0, x)  # one step to the end: x_1 = m_0 = clamp(3) = 0.5
    assert torch.allclose(out, torch.full_like(x, 0.5))


def test_warm_start_index():
    assert warm_start_index(10, 0.5) == 5 and warm_start_index(10, 1.0) == 0 and warm_start_index(4, 0.1) == 3
    for bad in (0.0, 1.5, -1, True, "0.5"):
        with pytest.raises(ValueError, match="warm_start_level"):
            warm_start_index(10, bad)
