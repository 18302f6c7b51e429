"""policy.timesteps: explicit timesteps for the multistep solvers (issue 15).

Checked here: every step against diffusers' DPMSolverMultistepScheduler.set_timesteps(timesteps=...), the
'logsnr' rule's defining property (uniform in lambda up to integer rounding), the one-line config errors, and
that the one setting reaches every loop built from the policy (eager, warm-start suffix, a compiled backend, its
cache key, the run summary)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgedp.config import parse_config
from edgedp.errors import ConfigError, UserError
from models.multistep import MultistepScheduler, logsnr_bounds, logsnr_timesteps, train_sigmas
from models.sampler import Sampler
from models.schedulers import SchedulerSpec, alphas_cumprod, timesteps, with_timesteps
from tests.example_configs import two_joint_config
from tests.test_sampler_solvers import Den  # the stand-in denoiser that records the t it is given

LISTS = ([90, 60, 16, 2], [90, 60, 30, 5], [90, 60, 30, 0], [99, 50, 10], [70, 41, 20, 8, 3, 1])
ACP = alphas_cumprod(SchedulerSpec(kind="ddim"))  # Diffusion Policy's schedule: squaredcos_cap_v2, N = 100


# ------------------------------------------------------------------ against diffusers
def _diffusers_dpm(prediction: str):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero", prediction_type=prediction)


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("custom", LISTS, ids=lambda c: "-".join(map(str, c)))
def test_every_step_matches_diffusers_custom_timesteps(custom, prediction):
    """Same sample and model output at every step: ours (from the spec's timesteps) against diffusers'."""
    ref = _diffusers_dpm(prediction)
    ref.set_timesteps(timesteps=custom)
    spec = SchedulerSpec(kind="dpmsolver++", clip_sample=False, prediction_type=prediction, timesteps=custom)
    ts = timesteps(spec).numpy()
    assert ts.tolist() == custom == ref.timesteps.tolist()
    mine = MultistepScheduler("dpmsolver++", alphas_cumprod(spec), ts, prediction, None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, generator=gen)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=gen)
        want = ref.step(out, t, x).prev_sample
        got = mine.step(out, i, x)
        err = float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))
        assert err < 5e-5, f"{custom} step {i}: relative error {err}"
        x = want  # both continue from diffusers' sample: every step is checked on its own


def test_whole_loop_follows_diffusers_custom_timesteps():
    """The policy's whole K-loop (Sampler) with explicit timesteps against diffusers' own loop, same denoiser."""
    custom = [90, 60, 16, 2]
    ref = _diffusers_dpm("epsilon")
    ref.set_timesteps(timesteps=custom)
    den = Den()
    spec = SchedulerSpec(kind="dpmsolver++", clip_sample=False, timesteps=custom)
    noise = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(2))
    cond = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = Sampler(den, spec)(noise, cond)
        assert den.calls == custom
        x = noise
        for t in ref.timesteps:
            x = ref.step(den(x, t.expand(2), cond), t, x).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["dpmsolver++", "unipc"])
def test_sampler_and_warm_start_suffix_use_the_explicit_timesteps(kind):
    spec = SchedulerSpec(kind=kind, timesteps=[90, 60, 16, 2])
    den = Den()
    s = Sampler(den, spec, 4, warm_start_level=0.5)
    assert s.timesteps.tolist() == [90, 60, 16, 2] and s.num_steps == 4
    assert s.warm_timesteps.tolist() == [16, 2]  # the suffix of the explicit list, solved as its own schedule
    default = Sampler(Den(), SchedulerSpec(kind=kind), 4)
    assert default.timesteps.tolist() != [90, 60, 16, 2]
    with torch.no_grad():
        s(torch.zeros(1, 8, 3), torch.zeros(1, 5))
    assert den.calls == [90, 60, 16, 2]


# ------------------------------------------------------------------ the logsnr rule
def test_logsnr_is_uniform_in_lambda_up_to_rounding():
    lam = -np.log(train_sigmas(ACP).double().numpy())  # lambda = log(alpha_t / sigma_t) = -log sigma(t)
    t_hi, t_lo = logsnr_bounds(ACP)
    assert (t_hi, t_lo) == (90, 2)  # 9 * (100 // 10); the smallest t with sigma >= 0.05
    sig = train_sigmas(ACP).double().numpy()
    assert sig[t_lo] >= 0.05 > sig[t_lo - 1]
    for k in (2, 3, 4, 6, 10):
        ts = logsnr_timesteps(ACP, k)
        assert ts[0] == t_hi and ts[-1] == t_lo and np.all(np.diff(ts) < 0)
        targets = np.linspace(lam[t_hi], lam[t_lo], k)
        for t, want in zip(ts, targets):
            # the nearest integer timestep in lambda: no neighbour is closer to the uniform target
            for nb in (t - 1, t + 1):
                if 0 <= nb < len(lam):
                    assert abs(lam[t] - want) <= abs(lam[nb] - want)
    assert logsnr_timesteps(ACP, 4).tolist() == [90, 60, 16, 2]


def test_logsnr_refuses_repeats_naming_k():
    with pytest.raises(ValueError, match="K = 40 repeats"):
        logsnr_timesteps(ACP, 40)
    spec = SchedulerSpec(kind="unipc")
    assert with_timesteps(spec, "logsnr", 4).timesteps == (90, 60, 16, 2)
    with pytest.raises(ValueError, match="K = 60"):
        with_timesteps(spec, "logsnr", 60)


def test_logsnr_bounds_generalize_to_other_schedules():
    acp = alphas_cumprod(SchedulerSpec(kind="ddim", num_train_timesteps=1000, beta_schedule="linear"))
    t_hi, t_lo = logsnr_bounds(acp)
    sig = train_sigmas(acp).double().numpy()
    assert t_hi == 900 and sig[t_lo] >= 0.05 > sig[t_lo - 1]
    assert len(set(logsnr_timesteps(acp, 8).tolist())) == 8


# ------------------------------------------------------------------ spec errors
@pytest.mark.parametrize("bad,match", [
    ([60, 90], "strictly descending"), ([90, 60, 60], "strictly descending"), ([100, 50], r"\[0, 99\]"),
    ([50, -1], r"\[0, 99\]"), ([], "non-empty"), ([90.0, 60], "integers"),
])
def test_spec_refuses_bad_lists(bad, match):
    with pytest.raises(ValueError, match=match):
        SchedulerSpec(kind="dpmsolver++", timesteps=bad)


def test_spec_refuses_ddim_and_a_k_that_disagrees():
    for kind in ("ddim", "ddpm"):
        with pytest.raises(ValueError, match="multistep samplers"):
            SchedulerSpec(kind=kind, timesteps=[90, 60])
    spec = SchedulerSpec(kind="dpmsolver++", timesteps=[90, 60, 16, 2])
    with pytest.raises(ValueError, match="num_inference_steps 5"):
        Sampler(Den(), spec, 5)


# ------------------------------------------------------------------ config: one line per mistake
def _cfg(**policy):
    data = copy.deepcopy(two_joint_config(scene={"task": "reach"}))
    data["policy"].pop("steps", None)
    data["policy"].update(policy)
    return parse_config(data)


@pytest.mark.parametrize("policy,match", [
    ({"timesteps": [60, 90]}, "policy.timesteps: must be strictly descending"),
    ({"timesteps": [90, 60, 60]}, "policy.timesteps: must be strictly descending"),
    ({"timesteps": [9, -1]}, "policy.timesteps: must be >= 0"),
    ({"timesteps": "uniform"}, "policy.timesteps: must be a descending list"),
    ({"timesteps": [90, 60], "steps": 3}, "policy.timesteps: 2 timesteps but policy.steps is 3"),
    ({"timesteps": [90, 60], "sampler": "ddim"}, "policy.timesteps: applies to the multistep samplers"),
    ({"timesteps": "logsnr", "sampler": "ddpm"}, "policy.timesteps: applies to the multistep samplers"),
])
def test_config_errors_are_one_line(policy, match):
    with pytest.raises(ConfigError) as exc:
        _cfg(**policy)
    text = str(exc.value)
    assert match in text and "\n" not in text.strip(), text


def test_config_accepts_lists_and_logsnr_and_defaults_to_none():
    assert _cfg().policy.timesteps is None
    assert _cfg(timesteps=[90, 60, 16, 2], steps=4, sampler="dpmsolver++").policy.timesteps == [90, 60, 16, 2]
    assert _cfg(timesteps="logsnr", steps=4).policy.timesteps == "logsnr"


def _spec():
    from edgedp.policy_loading import load_spec

    return load_spec(two_joint_config(scene={"task": "reach"})["policy"]["checkpoint"])


def test_validate_checks_against_the_checkpoint():
    """What needs the checkpoint (its N, its kind when policy.sampler is unset, logsnr's K) is one line at validate."""
    from edgedp.app import check_sampler_choice

    spec = _spec()
    n = int(spec.scheduler.get("num_train_timesteps", 100))
    kw = dict(warm_start_level=None, inpaint=None, label="policy.sampler", timesteps_label="policy.timesteps")
    with pytest.raises(UserError, match=rf"^policy.timesteps: .*\[0, {n - 1}\]"):
        check_sampler_choice(spec, None, "dpmsolver++", timesteps=[n + 5, 10], **kw)
    with pytest.raises(UserError, match="^policy.timesteps: .*K = 60 repeats"):
        check_sampler_choice(spec, 60, "dpmsolver++", timesteps="logsnr", **kw)
    with pytest.raises(UserError, match="^policy.timesteps: 2 timesteps but 3 steps"):
        check_sampler_choice(spec, 3, "dpmsolver++", timesteps=[90, 60], **kw)
    if spec.scheduler.get("kind", "ddpm") in ("ddim", "ddpm"):  # the checkpoint's own kind when sampler is unset
        with pytest.raises(UserError, match="^policy.timesteps: .*multistep samplers"):
            check_sampler_choice(spec, None, None, timesteps=[90, 60], **kw)
    sched = check_sampler_choice(spec, 4, "unipc", timesteps="logsnr", **kw)
    assert len(sched.timesteps) == 4


# ------------------------------------------------------------------ the policy and the compiled loops
def test_policy_configure_sampler_carries_the_timesteps():
    from tests.test_sampler_backends import tiny_policy

    policy = tiny_policy(10)
    policy.configure_sampler("dpmsolver++", timesteps="logsnr")  # K = the K in use (10)
    assert policy.sampler.timesteps.tolist() == logsnr_timesteps(ACP, 10).tolist()
    policy.configure_sampler("dpmsolver++", timesteps=[90, 60, 16, 2])  # K becomes the list's length
    assert policy.num_inference_steps == 4 and policy.scheduler_spec.timesteps == (90, 60, 16, 2)
    with pytest.raises(ValueError, match="multistep samplers"):
        policy.configure_sampler("ddim", timesteps=[90, 60])
    assert policy.scheduler_spec.timesteps == (90, 60, 16, 2)  # a refused choice leaves the policy as it was
    policy.configure_sampler("dpmsolver++")  # None: back to the spacing rule
    assert policy.scheduler_spec.timesteps is None and policy.sampler.timesteps.tolist() != [90, 60, 16, 2]


@pytest.mark.usefixtures("one_torch_thread")
def test_compiled_loop_uses_the_timesteps_and_its_cache_key_changes(tmp_path):
    from edgedp.compile.api import compile_policy
    from edgedp.compile.backends import get_backend
    from tests.test_sampler_backends import tiny_policy

    backend = "onnxruntime-loop"
    reason = get_backend(backend).unavailable(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    policy = tiny_policy(4)
    policy.configure_sampler("dpmsolver++")
    first = compile_policy(policy, backend, "fp32", 4, "cpu", tmp_path)
    policy.configure_sampler("dpmsolver++", timesteps=[90, 60, 16, 2])
    custom = compile_policy(policy, backend, "fp32", 4, "cpu", tmp_path)
    assert first.state == "miss" and custom.state != "hit"  # never the loop built for the spacing's timesteps
    assert compile_policy(policy, backend, "fp32", 4, "cpu", tmp_path).state == "hit"
    g = torch.randn((1, policy.global_cond_dim), generator=torch.Generator().manual_seed(1))
    noise = policy.random_noise(1)
    with torch.inference_mode():
        want = policy.sample(g, noise)
        got = custom.sampler(g, noise)
        other = first.sampler(g, noise)
    assert float((got - want).abs().max()) <= 1e-4
    assert float((other - want).abs().max()) > 1e-3  # the spacing's loop samples something else
    loop = getattr(custom.sampler.loop, "loop", custom.sampler.loop)
    assert loop.timesteps.tolist() == [90, 60, 16, 2]


def test_eval_and_serve_parse_timesteps():
    from edgedp.commands.eval import apply_overrides, parse_timesteps

    assert parse_timesteps("90,60,16,2") == [90, 60, 16, 2]
    assert parse_timesteps("logsnr") == "logsnr" and parse_timesteps("spacing") is None
    with pytest.raises(UserError, match="^--timesteps: 'a,b'"):
        parse_timesteps("a,b")
    cfg = _cfg(sampler="dpmsolver++")
    apply_overrides(cfg, steps="4", timesteps="90,60,16,2")
    assert cfg.policy.timesteps == [90, 60, 16, 2]
    with pytest.raises(UserError, match="^--timesteps: 4 timesteps but policy.steps is 3"):
        apply_overrides(cfg, steps="3", timesteps="90,60,16,2")
    with pytest.raises(UserError, match="^--timesteps: applies to the multistep samplers"):
        apply_overrides(_cfg(sampler="ddim"), timesteps="logsnr")


def test_served_policy_reports_its_timesteps():
    """edgedp serve --timesteps reaches the served loop, and /health says which (the robot compares at check)."""
    from edgedp.serve.service import PolicyService, ServeOptions

    ckpt = two_joint_config(scene={"task": "reach"})["policy"]["checkpoint"]
    svc = PolicyService(ServeOptions(ckpt, steps=4, sampler="dpmsolver++", timesteps="logsnr", threads=1))
    assert svc.spec()["timesteps"] == [90, 60, 16, 2] and svc.steps == 4
    assert svc.policy.sampler.timesteps.tolist() == [90, 60, 16, 2]
    assert PolicyService(ServeOptions(ckpt, steps=4, sampler="dpmsolver++", threads=1)).spec()["timesteps"] is None


@pytest.mark.usefixtures("one_torch_thread")
def test_assembled_run_samples_at_the_config_timesteps():
    """Through edgedp.app's one assembly point: the policy, the compiled sampler's loop and the run summary (which
    edgedp eval records per condition) all carry policy.timesteps, resolved."""
    from edgedp.app import assemble

    built = assemble(_cfg(sampler="dpmsolver++", steps=4, timesteps="logsnr"))
    try:
        parts = built.parts
        assert parts.policy.scheduler_spec.timesteps == (90, 60, 16, 2)
        loop = getattr(parts.sampler.loop, "loop", parts.sampler.loop)
        assert loop.timesteps.tolist() == [90, 60, 16, 2] and parts.steps == 4
        assert parts.config_summary["timesteps"] == [90, 60, 16, 2]
    finally:
        for close in reversed(built.devices.closers):
            close()


def test_serve_refuses_bad_timesteps_with_one_line_before_starting(capsys, monkeypatch):
    from edgedp.cli import main

    monkeypatch.setenv("EDGEDP_SERVE_TOKEN", "test-token-0123456789abcdef")
    for argv, needle in ((["--timesteps", "90,x"], "--timesteps: '90,x' is not"),
                         (["--sampler", "ddim", "--timesteps", "90,60"], "--timesteps: explicit timesteps apply"),
                         (["--sampler", "unipc", "--timesteps", "60,90"], "--timesteps: timesteps must be strictly"),
                         (["--sampler", "unipc", "--steps", "3", "--timesteps", "90,60"],
                          "--timesteps: 2 timesteps but 3 steps")):
        assert main(["serve", "preset:small", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err


def test_checkpoints_never_carry_timesteps():
    """A checkpoint's scheduler config with timesteps is refused; the policy's own spec dict never gets them."""
    from tests.test_sampler_backends import tiny_policy

    with pytest.raises(ValueError, match="run option"):
        SchedulerSpec.from_dict({"kind": "dpmsolver++", "timesteps": [90, 60]})
    assert SchedulerSpec.from_dict(SchedulerSpec(kind="unipc").to_dict()).timesteps is None
    policy = tiny_policy(4)
    policy.configure_sampler("dpmsolver++", timesteps=[90, 60, 16, 2])
    assert "timesteps" not in policy.spec.scheduler  # what native checkpoints save (models/native.py)


def test_pusht_table_cell_derives_the_timesteps_key(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from edgedp.config import load_config

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "pusht_table.py"
    spec = importlib.util.spec_from_file_location("pusht_table_timesteps", path)
    pt = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pt  # dataclasses look their module up
    spec.loader.exec_module(pt)
    cell = next(c for c in pt.CELLS if c.name == "state_dpm_k4_logsnr")
    plan = pt.plan_cell(cell, tmp_path, {}, None)
    assert plan.derived["policy"]["timesteps"] == "logsnr" and plan.derived["policy"]["sampler"] == "dpmsolver++"
    cfg = load_config(plan.config)  # the file edgedp eval reads
    assert cfg.policy.timesteps == "logsnr" and cfg.policy.steps == 4


def test_eval_sampler_override_to_ddim_drops_the_configs_solver_timesteps():
    """examples/pusht_state.yaml ships DPM-Solver++ at logsnr timesteps; `edgedp eval --sampler ddim` means DDIM's own
    spacing (not a config error), while another solver keeps the timesteps."""
    from pathlib import Path

    from edgedp.commands.eval import apply_overrides
    from edgedp.config import load_config

    example = Path(__file__).resolve().parent.parent / "examples" / "pusht_state.yaml"
    cfg = load_config(example)
    assert (cfg.policy.sampler, cfg.policy.timesteps, cfg.policy.steps) == ("dpmsolver++", "logsnr", 4)
    apply_overrides(cfg, sampler="ddim", steps="10")
    assert (cfg.policy.sampler, cfg.policy.timesteps) == ("ddim", None)
    other = load_config(example)
    apply_overrides(other, sampler="unipc")
    assert (other.policy.sampler, other.policy.timesteps) == ("unipc", "logsnr")
