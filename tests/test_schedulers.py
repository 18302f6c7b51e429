"""Scheduler math against the installed diffusers (step by step) and against the recorded
reference runs of the original Diffusion Policy code (diffusers 0.11.1) and LeRobot 0.4.4."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from models.schedulers import (
    BETA_SCHEDULES,
    NoiseScheduler,
    SchedulerSpec,
    alphas_cumprod,
    step_table,
    timesteps,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
DP_RUNS = [("ddim10", "ddim", 10), ("ddim16", "ddim", 16), ("ddpm100", "ddpm", 100)]


def _close(mine: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------- diffusers parity


def _diffusers_pair(spec: SchedulerSpec, k: int):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    common = dict(
        num_train_timesteps=spec.num_train_timesteps, beta_start=spec.beta_start, beta_end=spec.beta_end,
        beta_schedule=spec.beta_schedule, clip_sample=spec.clip_sample, clip_sample_range=spec.clip_sample_range,
        prediction_type=spec.prediction_type, steps_offset=spec.steps_offset, timestep_spacing=spec.timestep_spacing,
    )
    if spec.kind == "ddim":
        ref = diffusers.DDIMScheduler(set_alpha_to_one=spec.set_alpha_to_one, **common)
    else:
        ref = diffusers.DDPMScheduler(variance_type=spec.variance_type, **common)
    ref.set_timesteps(k)
    return ref, NoiseScheduler(spec, k)


def _check_against_diffusers(spec: SchedulerSpec, k: int, seed: int) -> None:
    """Feed both the same (sample, model_output, noise) at every step; outputs must agree."""
    ref, mine = _diffusers_pair(spec, k)
    assert torch.equal(mine.timesteps, ref.timesteps), f"{spec} K={k}: timesteps differ"
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 3, generator=gen)
    for i, t in enumerate(ref.timesteps):
        model_output = 1.5 * torch.randn(x.shape, generator=gen)
        noise_seed = seed * 1000 + i
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(noise_seed))
        if spec.kind == "ddim":
            expected = ref.step(model_output, t, x, eta=spec.eta,
                                variance_noise=noise if spec.eta > 0 else None).prev_sample
        else:  # diffusers draws its own noise; give it a generator that yields the same draw
            expected = ref.step(model_output, t, x,
                                generator=torch.Generator().manual_seed(noise_seed)).prev_sample
        got = mine.step(model_output, i, x, noise)
        _close(got, expected, f"{spec} K={k} step {i} (t={int(t)})")
        x = expected


DDIM_CASES = [
    dict(beta_schedule=bs, clip_sample=clip, clip_sample_range=rng, prediction_type=pt,
         set_alpha_to_one=one, steps_offset=off)
    for bs, (clip, rng), pt, one, off in itertools.product(
        # diffusers' DDIMScheduler has no "sigmoid" betas (only DDPMScheduler does)
        [b for b in BETA_SCHEDULES if b != "sigmoid"], [(True, 1.0), (True, 2.5), (False, 1.0)],
        ["epsilon", "sample", "v_prediction"], [True, False], [0, 1])
]


@pytest.mark.parametrize("k", [8, 10, 16, 100])
def test_ddim_matches_diffusers_every_option(k):
    for case_no, case in enumerate(DDIM_CASES):
        if k == 100 and case["steps_offset"]:
            continue  # 99 + 1 is past the table; diffusers itself would index out of range
        _check_against_diffusers(SchedulerSpec(kind="ddim", **case), k, seed=case_no)


@pytest.mark.parametrize("k", [8, 10, 16, 100])
def test_ddpm_matches_diffusers_every_option(k):
    cases = itertools.product(
        BETA_SCHEDULES, [(True, 1.0), (True, 2.5), (False, 1.0)], ["epsilon", "sample", "v_prediction"],
        [0, 1], ["fixed_small", "fixed_small_log", "fixed_large"])
    for case_no, (bs, (clip, rng), pt, off, var) in enumerate(cases):
        if k == 100 and off:
            continue
        spec = SchedulerSpec(kind="ddpm", beta_schedule=bs, clip_sample=clip, clip_sample_range=rng,
                             prediction_type=pt, steps_offset=off, variance_type=var)
        _check_against_diffusers(spec, k, seed=case_no)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
@pytest.mark.parametrize("k", [7, 10, 16])
def test_other_timestep_spacings_match_diffusers(kind, spacing, k):
    _check_against_diffusers(SchedulerSpec(kind=kind, timestep_spacing=spacing), k, seed=k)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_with_eta_matches_diffusers(eta):
    _check_against_diffusers(SchedulerSpec(kind="ddim", eta=eta), 10, seed=7)


def test_1000_step_linear_schedule_matches_diffusers():
    """diffusers' own defaults (1000 steps, linear betas), as image models use them."""
    spec = SchedulerSpec(kind="ddim", num_train_timesteps=1000, beta_schedule="linear", beta_end=0.012)
    _check_against_diffusers(spec, 50, seed=3)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("n", [100, 1000])
def test_alphas_cumprod_bit_exact_with_diffusers(schedule, n):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    spec = SchedulerSpec(num_train_timesteps=n, beta_schedule=schedule, beta_end=0.012 if n == 1000 else 0.02)
    ref = diffusers.DDPMScheduler(num_train_timesteps=n, beta_schedule=schedule, beta_end=spec.beta_end)
    assert torch.equal(alphas_cumprod(spec), ref.alphas_cumprod)


# ---------------------------------------------------------------------------- recorded fixtures


def _npz(rel: str) -> dict[str, np.ndarray]:
    path = FIXTURES / rel
    if not path.is_file():
        pytest.skip(f"fixture {path} is not present")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", ["hybrid_pusht", "lowdim_pusht"])
@pytest.mark.parametrize("run,kind,k", DP_RUNS)
def test_original_dp_recorded_steps(name, run, kind, k):
    """step_x[i+1] == step(step_eps[i], i, step_x[i], variance_noise[i]) with diffusers 0.11.1 rules."""
    d = _npz(f"diffusion_policy/{name}/expected.npz")
    spec = SchedulerSpec(kind=kind, ddpm_prev_rule="t_minus_one")
    sched = NoiseScheduler(spec, k)
    assert torch.equal(alphas_cumprod(spec), torch.from_numpy(d["alphas_cumprod"]))
    assert sched.timesteps.tolist() == d[f"{run}_timesteps"].tolist()
    xs, eps = torch.from_numpy(d[f"{run}_step_x"]), torch.from_numpy(d[f"{run}_step_eps"])
    noise = torch.from_numpy(d[f"{run}_variance_noise"]) if kind == "ddpm" else None
    assert torch.equal(xs[0], torch.from_numpy(d[f"{run}_noise"]))
    for i in range(k):
        got = sched.step(eps[i], i, xs[i], None if noise is None else noise[i])
        if i + 1 < k:
            _close(got, xs[i + 1], f"{name} {run} step {i}")
        else:  # naction_pred went through unnormalize+normalize, hence not bit-equal
            _close(got, torch.from_numpy(d[f"{run}_naction_pred"]), f"{name} {run} final")


def test_original_dp_ddpm_needs_t_minus_one_rule():
    """Why the flag exists: even at K = N, current diffusers' re-derived per-step beta drifts
    from 0.11.1's trained beta far beyond float noise on the recorded DDPM run."""
    d = _npz("diffusion_policy/hybrid_pusht/expected.npz")
    xs, eps = torch.from_numpy(d["ddpm100_step_x"]), torch.from_numpy(d["ddpm100_step_eps"])
    noise = torch.from_numpy(d["ddpm100_variance_noise"])
    worst = {}
    for rule in ("t_minus_one", "schedule"):
        sched = NoiseScheduler(SchedulerSpec(kind="ddpm", ddpm_prev_rule=rule), 100)
        worst[rule] = max(float((sched.step(eps[i], i, xs[i], noise[i]) - xs[i + 1]).abs().max()) for i in range(99))
    assert worst["t_minus_one"] <= 1e-6
    assert worst["schedule"] > 1e-6


def test_lerobot_recorded_steps_bit_exact():
    d = _npz("lerobot/pusht_1cam/expected.npz")
    spec = SchedulerSpec.from_dict(dict(
        noise_scheduler_type="DDIM", num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", beta_start=0.0001,
        beta_end=0.02, prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0, num_inference_steps=10))
    sched = NoiseScheduler(spec)
    assert torch.equal(sched.alphas_cumprod, torch.from_numpy(d["alphas_cumprod"]))
    assert sched.timesteps.tolist() == d["timesteps"].tolist()
    x = torch.from_numpy(d["noise"])
    eps, samples = torch.from_numpy(d["step_eps"]), torch.from_numpy(d["step_samples"])
    for i in range(10):
        x = sched.step(eps[i], i, x)
        assert torch.equal(x, samples[i]), f"step {i}: max diff {float((x - samples[i]).abs().max())}"
    assert torch.equal(x, torch.from_numpy(d["traj_norm"]))


# ---------------------------------------------------------------------------- schedule details


def test_ddpm_rules_differ_below_n_steps():
    new = step_table(SchedulerSpec(kind="ddpm"), 10)
    old = step_table(SchedulerSpec(kind="ddpm", ddpm_prev_rule="t_minus_one"), 10)
    assert new.timesteps.tolist() == old.timesteps.tolist() == list(range(90, -1, -10))
    assert new.prev_timesteps.tolist() == [80, 70, 60, 50, 40, 30, 20, 10, 0, -1]
    assert old.prev_timesteps.tolist() == [89, 79, 69, 59, 49, 39, 29, 19, 9, -1]


def test_t_minus_one_schedule_is_diffusers_0_11_arange():
    # 0.11.1 DDPM: arange(0, N, N // K) reversed, which holds 34 steps for K = 30
    ts = timesteps(SchedulerSpec(kind="ddpm", ddpm_prev_rule="t_minus_one"), 30)
    assert ts.tolist() == list(range(99, -1, -3))
    assert len(NoiseScheduler(SchedulerSpec(kind="ddpm", ddpm_prev_rule="t_minus_one"), 30)) == 34


def test_ddpm_t0_step_adds_no_noise():
    sched = NoiseScheduler(SchedulerSpec(kind="ddpm"), 10)
    x, m = torch.randn(1, 16, 2), torch.randn(1, 16, 2)
    assert sched.table.noisy == (True,) * 9 + (False,)
    assert torch.equal(sched.step(m, 9, x, torch.full_like(x, 1e3)), sched.step(m, 9, x, None))


def test_add_noise_matches_diffusers():
    diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    mine = NoiseScheduler(SchedulerSpec())
    x0, noise, t = torch.randn(4, 16, 2), torch.randn(4, 16, 2), torch.tensor([0, 13, 57, 99])
    assert torch.equal(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))


# ---------------------------------------------------------------------------- spec I/O and errors


def test_from_dict_original_dp_config_and_round_trip():
    cfg = {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler", "num_train_timesteps": 100,
           "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2",
           "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon"}
    spec = SchedulerSpec.from_dict(cfg, ddpm_prev_rule="t_minus_one", num_inference_steps=100)
    assert spec.kind == "ddpm" and spec.ddpm_prev_rule == "t_minus_one" and spec.num_inference_steps == 100
    assert SchedulerSpec.from_dict(spec.to_dict()) == spec


def test_from_dict_diffusers_saved_config():
    cfg = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.11.1", "num_train_timesteps": 100,
           "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2", "trained_betas": None,
           "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 1, "prediction_type": "epsilon"}
    spec = SchedulerSpec.from_dict(cfg)
    assert (spec.kind, spec.steps_offset, spec.ddpm_prev_rule) == ("ddim", 1, "t_minus_one")
    ddpm = SchedulerSpec.from_dict({"_class_name": "DDPMScheduler", "_diffusers_version": "0.35.2",
                                    "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                                    "sample_max_value": 1.0, "rescale_betas_zero_snr": False})
    assert ddpm.ddpm_prev_rule == "schedule"
    assert SchedulerSpec.from_dict({"predict_epsilon": False}).prediction_type == "sample"


@pytest.mark.parametrize("data,needle", [
    ({"beta_shedule": "linear"}, "'beta_shedule'"),
    ({"beta_schedule": "cosine"}, "beta_schedule"),
    ({"kind": "pndm"}, "kind"),
    ({"prediction_type": "noise"}, "prediction_type"),
    ({"variance_type": "learned"}, "variance_type"),
    ({"timestep_spacing": "uniform"}, "timestep_spacing"),
    ({"ddpm_prev_rule": "t-1"}, "ddpm_prev_rule"),
    ({"_target_": "diffusers.PNDMScheduler"}, "_target_"),
    ({"_target_": "x.DDIMScheduler", "kind": "ddpm"}, "_target_"),
    ({"noise_scheduler_type": "EULER"}, "noise_scheduler_type"),
    ({"thresholding": True}, "thresholding"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"clip_sample": "yes"}, "clip_sample"),
    ({"clip_sample_range": 0}, "clip_sample_range"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"num_inference_steps": 101}, "num_inference_steps"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"kind": "ddim", "steps_offset": 1, "num_inference_steps": 100}, "steps_offset"),
    ({"steps_offset": -1}, "steps_offset"),
    ({"eta": 0.5}, "eta"),
    ({"kind": "ddim", "eta": float("nan")}, "eta"),
    ({"beta_schedule": "linear", "beta_start": 0.03}, "beta_start"),
    ({"_diffusers_version": "latest"}, "_diffusers_version"),
    ({"ddpm_prev_rule": "t_minus_one", "steps_offset": 1}, "steps_offset"),
])
def test_bad_spec_names_the_field(data, needle):
    with pytest.raises(ValueError) as info:
        SchedulerSpec.from_dict(data)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_step_rejects_bad_index_and_shapes():
    sched = NoiseScheduler(SchedulerSpec(kind="ddim"), 10)
    x = torch.zeros(1, 16, 2)
    with pytest.raises(ValueError, match="t_index"):
        sched.step(x, 10, x)
    with pytest.raises(ValueError, match="shape"):
        sched.step(torch.zeros(1, 16, 3), 0, x)
