"""The fixed-K Sampler: equals the step-by-step scheduler loop, replays the recorded reference
runs, calls the denoiser with int64 (B,) timesteps, and survives torch.export as one graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.sampler import Sampler
from models.schedulers import NoiseScheduler, SchedulerSpec

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")


class TinyDenoiser(nn.Module):
    """A small deterministic conv denoiser with the U-Net's call signature (sample, t, cond)."""

    def __init__(self, action_dim: int = 2, cond_dim: int = 6, hidden: int = 16, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.inp = nn.Conv1d(action_dim, hidden, 3, padding=1)
        self.mid = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv1d(hidden, action_dim, 3, padding=1)
        self.t_embed = nn.Embedding(1000, hidden)
        self.cond = nn.Linear(cond_dim, 2 * hidden)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        self.seen: list[torch.Tensor] = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and not isinstance(timestep, torch.fx.Proxy):
            self.seen.append(timestep)
        scale, bias = self.cond(global_cond).chunk(2, dim=-1)
        h = self.inp(sample.transpose(1, 2)) + self.t_embed(timestep)[:, :, None]
        h = torch.tanh(h * (1 + scale[:, :, None]) + bias[:, :, None])
        return self.out(torch.tanh(self.mid(h))).transpose(1, 2)


class Replay(nn.Module):
    """Returns the recorded eps for the timestep it is given, and checks the input it gets."""

    def __init__(self, ts: np.ndarray, xs: torch.Tensor, eps: torch.Tensor):
        super().__init__()
        self.by_t = {int(t): i for i, t in enumerate(ts)}
        self.xs, self.eps = xs, eps
        self.input_error = 0.0

    def forward(self, sample, timestep, global_cond):
        assert timestep.dtype == torch.int64 and timestep.shape == (sample.shape[0],)
        i = self.by_t[int(timestep[0])]
        self.input_error = max(self.input_error, float((sample - self.xs[i]).abs().max()))
        return self.eps[i]


def _eager_loop(denoiser, spec, k, noise, cond, variance_noise=None):
    """The reference: a Python loop over NoiseScheduler.step, as a user would write it."""
    sched = NoiseScheduler(spec, k)
    x = noise
    for i, t in enumerate(sched.timesteps.tolist()):
        eps = denoiser(x, torch.full((x.shape[0],), t, dtype=torch.int64), cond)
        x = sched.step(eps, i, x, None if variance_noise is None else variance_noise[i])
    return x


def _inputs(batch=3, horizon=16, action_dim=2, cond_dim=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, horizon, action_dim, generator=gen), torch.randn(batch, cond_dim, generator=gen)


@pytest.mark.parametrize("spec,k", [
    (SchedulerSpec(kind="ddim"), 8),
    (SchedulerSpec(kind="ddim"), 16),
    (SchedulerSpec(kind="ddim", prediction_type="sample", set_alpha_to_one=False, steps_offset=1), 10),
    (SchedulerSpec(kind="ddim", eta=0.7), 10),
    (SchedulerSpec(kind="ddpm"), 100),
    (SchedulerSpec(kind="ddpm"), 10),
    (SchedulerSpec(kind="ddpm", ddpm_prev_rule="t_minus_one", variance_type="fixed_large"), 10),
])
def test_forward_equals_step_loop(spec, k):
    den = TinyDenoiser()
    sampler = Sampler(den, spec, k).eval()
    noise, cond = _inputs()
    var = torch.randn((sampler.num_steps,) + tuple(noise.shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = sampler(noise, cond, var if sampler.needs_variance_noise else None)
        want = _eager_loop(den, spec, k, noise, cond, var if sampler.needs_variance_noise else None)
    assert sampler.timesteps.dtype == torch.int64 and sampler.timesteps.shape == (sampler.num_steps,)
    assert sampler.denoiser is den
    assert torch.equal(got, want)


def test_denoiser_gets_int64_batch_timesteps():
    den = TinyDenoiser()
    sampler = Sampler(den, SchedulerSpec(kind="ddim"), 10)
    noise, cond = _inputs(batch=4)
    with torch.no_grad():
        sampler(noise, cond)
    assert [tuple(t.shape) for t in den.seen] == [(4,)] * 10
    assert all(t.dtype == torch.int64 for t in den.seen)
    assert [int(t[0]) for t in den.seen] == list(range(90, -1, -10))


def test_ddpm_draws_noise_inside_in_step_order():
    """Without variance_noise, forward draws one randn per noisy step, like a seeded manual loop."""
    den = TinyDenoiser()
    spec = SchedulerSpec(kind="ddpm")
    sampler = Sampler(den, spec, 10)
    noise, cond = _inputs()
    with torch.no_grad():
        torch.manual_seed(123)
        got = sampler(noise, cond)
        torch.manual_seed(123)
        var = torch.stack([torch.randn_like(noise) for _ in range(9)] + [torch.zeros_like(noise)])
        want = _eager_loop(den, spec, 10, noise, cond, var)
        assert torch.equal(got, want)
        # the t = 0 row of a given variance_noise is ignored
        var2 = var.clone()
        var2[-1] = 1e3
        assert torch.equal(sampler(noise, cond, var2), want)


def test_buffers_follow_dtype_and_stay_out_of_state_dict():
    den = TinyDenoiser()
    sampler = Sampler(den, SchedulerSpec(kind="ddim"), 10)
    assert set(sampler.state_dict()) == {f"denoiser.{k}" for k in den.state_dict()}
    noise, cond = _inputs()
    with torch.no_grad():
        ref = sampler(noise, cond)
        sampler64 = sampler.double()
        assert sampler64.sqrt_a.dtype == torch.float64 and sampler64.timesteps.dtype == torch.int64
        out64 = sampler64(noise.double(), cond.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- recorded reference runs


def _npz(rel):
    path = FIXTURES / rel
    if not path.is_file():
        pytest.skip(f"fixture {path} is not present")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", ["hybrid_pusht", "lowdim_pusht"])
@pytest.mark.parametrize("run,kind,k", [("ddim10", "ddim", 10), ("ddim16", "ddim", 16), ("ddpm100", "ddpm", 100)])
def test_sampler_replays_original_dp_runs(name, run, kind, k):
    d = _npz(f"diffusion_policy/{name}/expected.npz")
    xs, eps = torch.from_numpy(d[f"{run}_step_x"]), torch.from_numpy(d[f"{run}_step_eps"])
    replay = Replay(d[f"{run}_timesteps"], xs, eps)
    sampler = Sampler(replay, SchedulerSpec(kind=kind, ddpm_prev_rule="t_minus_one"), k)
    var = torch.from_numpy(d[f"{run}_variance_noise"]) if kind == "ddpm" else None
    out = sampler(torch.from_numpy(d[f"{run}_noise"]), torch.from_numpy(d["global_cond"]), var)
    assert replay.input_error <= 1e-6
    torch.testing.assert_close(out, torch.from_numpy(d[f"{run}_naction_pred"]), rtol=0, atol=1e-6)


def test_sampler_replays_lerobot_run_bit_exact():
    d = _npz("lerobot/pusht_1cam/expected.npz")
    xs = torch.cat([torch.from_numpy(d["noise"])[None], torch.from_numpy(d["step_samples"])[:-1]])
    replay = Replay(d["timesteps"], xs, torch.from_numpy(d["step_eps"]))
    sampler = Sampler(replay, SchedulerSpec(kind="ddim", num_inference_steps=10))
    out = sampler(torch.from_numpy(d["noise"]), torch.from_numpy(d["global_cond"]))
    assert replay.input_error == 0.0
    assert torch.equal(out, torch.from_numpy(d["traj_norm"]))


# ---------------------------------------------------------------------------- graph capture


def test_torch_export_ddim_matches_eager_loop():
    den = TinyDenoiser().eval()
    spec = SchedulerSpec(kind="ddim")
    sampler = Sampler(den, spec, 10).eval()
    noise, cond = _inputs(batch=2)
    with torch.no_grad():
        program = torch.export.export(sampler, (noise, cond))
        # one graph: exactly K denoiser evaluations (K embedding look-ups), no calls out
        ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
        assert sum("embedding" in str(op) for op in ops) == 10
        noise2, cond2 = _inputs(batch=2, seed=9)
        for a, c in ((noise, cond), (noise2, cond2)):
            exported = program.module()(a, c)
            eager = _eager_loop(den, spec, 10, a, c)
            torch.testing.assert_close(exported, eager, rtol=0, atol=1e-6)


def test_torch_export_ddpm_with_variance_noise_input():
    den = TinyDenoiser().eval()
    spec = SchedulerSpec(kind="ddpm")
    sampler = Sampler(den, spec, 10).eval()
    noise, cond = _inputs(batch=2)
    var = torch.randn(10, *noise.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        program = torch.export.export(sampler, (noise, cond, var))
        assert not any("randn" in str(n.target) for n in program.graph.nodes)
        torch.testing.assert_close(program.module()(noise, cond, var), _eager_loop(den, spec, 10, noise, cond, var),
                                   rtol=0, atol=1e-6)


def test_forward_rejects_wrong_shapes():
    sampler = Sampler(TinyDenoiser(), SchedulerSpec(kind="ddpm"), 10)
    noise, cond = _inputs(batch=2)
    with pytest.raises(ValueError, match="variance_noise"):
        sampler(noise, cond, torch.zeros(9, *noise.shape))
    with pytest.raises(ValueError, match="global_cond"):
        sampler(noise, cond[:1])
    with pytest.raises(ValueError, match="noise"):
        sampler(noise[0], cond)


def test_torch_compile_captures_one_graph():
    """fullgraph=True fails on any graph break; the 'eager' backend keeps this test fast."""
    den = TinyDenoiser().eval()
    spec = SchedulerSpec(kind="ddim")
    sampler = Sampler(den, spec, 8).eval()
    noise, cond = _inputs(batch=2)
    with torch.no_grad():
        compiled = torch.compile(sampler, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(noise, cond), _eager_loop(den, spec, 8, noise, cond), rtol=0, atol=1e-6)
