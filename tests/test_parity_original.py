"""Original Diffusion Policy checkpoints: the imported policy reproduces the reference outputs.

For each fixture (hybrid image and low-dim Push-T, made by the original code at its last
commit): global conditioning, denoiser probes, every step's denoiser output (teacher-forced),
every scheduler step, and the full DDIM-10 / DDIM-16 / DDPM-100 trajectories from the recorded
noise, normalized (1e-5) and raw (1e-5 x action range; raw float32 rounding alone reaches ~1e-3
units at a range of ~500). The EMA weights must be the ones used.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint_import.convert import build_policy
from models.checkpoint_import.original_ckpt import read_workspace_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
from sweep_check import missing_reference  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "diffusion_policy"
NORM_TOL = 1e-5
RUNS = {"ddim10": ("ddim", 10), "ddim16": ("ddim", 16), "ddpm100": ("ddpm", 100)}



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _fixture_dir(name: str) -> Path:
    d = FIXTURES / name
    if not (d / "checkpoint.ckpt").is_file():
        missing_reference(f"reference fixture {d} not present (expected at <repo>/../shared/fixtures)")
    return d


class Loaded:
    """One checkpoint read once; one policy per sampler configuration sharing the same weights."""

    def __init__(self, name: str):
        d = _fixture_dir(name)
        self.name = name
        self.imp = read_workspace_checkpoint(d / "checkpoint.ckpt")
        self.exp = dict(np.load(d / "expected.npz"))
        self.policies = {}
        for run, (kind, k) in RUNS.items():
            if f"{run}_noise" not in self.exp:
                continue
            imp = copy.copy(self.imp)
            # The fixture swapped in DDIM (set_alpha_to_one, steps_offset 0) for the ddim runs.
            imp.scheduler = dict(self.imp.scheduler, kind=kind, num_inference_steps=k)
            self.policies[run] = build_policy(imp)

    def obs(self) -> dict:
        """Raw inputs: `obs_<key>` per shape_meta key (image policies) or `obs` (low-dim), batch 1."""
        e = self.exp
        return {k: (e[f"obs_{k}"] if f"obs_{k}" in e else e[k])[0] for k in self.imp.feature_order}

    @property
    def action_range(self) -> float:
        nf = self.imp.normalization["action"]
        return float((2.0 / nf.stats["scale"]).max())  # limits normalizer: scale = 2 / (max - min)


def _names() -> list[str]:
    """Every fixture directory present (new ones are picked up), else the two shipped names (skipped)."""
    if FIXTURES.is_dir():
        found = sorted(p.name for p in FIXTURES.iterdir()
                       if (p / "checkpoint.ckpt").is_file() and (p / "expected.npz").is_file())
        if found:
            return found
    return ["hybrid_pusht", "lowdim_pusht"]


@pytest.fixture(scope="module", params=_names())
def ck(request) -> Loaded:
    return Loaded(request.param)


def test_weights_are_ema_and_config_from_pickled_cfg(ck):
    assert "ema_model" in ck.imp.provenance["weights"]
    if ck.name == "hybrid_pusht":
        assert ck.imp.feature_order == ["image", "agent_pos"]  # the pickled cfg's order, not alphabetical
        assert ck.imp.image_kwargs["crop_shape"] == (84, 84)
        assert ck.imp.param_counts()["encoder"] == 11_197_088
    assert ck.imp.scheduler["kind"] == "ddpm" and ck.imp.scheduler["ddpm_prev_rule"] == "diffusers_0_11"


def test_global_cond_and_obs_features(ck):
    pol = next(iter(ck.policies.values()))
    gc = pol.encode(ck.obs()).numpy()
    np.testing.assert_allclose(gc, ck.exp["global_cond"], rtol=0, atol=NORM_TOL)
    if "obs_features" in ck.exp:
        np.testing.assert_allclose(gc.reshape(ck.exp["obs_features"].shape), ck.exp["obs_features"], rtol=0, atol=NORM_TOL)
    if "nobs_agent_pos" in ck.exp and ck.imp.feature_order[-1] == "agent_pos":
        np.testing.assert_array_equal(gc.reshape(pol.n_obs_steps, -1)[:, -2:], ck.exp["nobs_agent_pos"][0])
    # EMA, not the raw model: the non-EMA encoder gives visibly different features.
    if "nonema_global_cond" in ck.exp and not np.array_equal(ck.exp["nonema_global_cond"], ck.exp["global_cond"]):
        assert np.abs(gc - ck.exp["nonema_global_cond"]).max() > 1e-3


def test_denoiser_probes(ck):
    pol = next(iter(ck.policies.values()))
    gc = torch.from_numpy(ck.exp["global_cond"])
    with torch.inference_mode():
        for i, k in enumerate(ck.exp["probe_k"]):
            out = pol.denoise(torch.from_numpy(ck.exp["probe_x"][i]), torch.tensor([int(k)]), gc).numpy()
            np.testing.assert_allclose(out, ck.exp["probe_eps"][i], rtol=0, atol=NORM_TOL, err_msg=f"probe k={k}")
            if "nonema_probe_eps" in ck.exp:
                assert np.abs(out - ck.exp["nonema_probe_eps"][i]).max() > 1e-4


@pytest.mark.parametrize("run", list(RUNS))
def test_per_step_denoiser_and_scheduler(ck, run):
    if run not in ck.policies:
        pytest.skip(f"{ck.name} has no {run} recording")
    pol = ck.policies[run]
    e = ck.exp
    np.testing.assert_array_equal(pol.sampler.timesteps.numpy(), e[f"{run}_timesteps"])
    gc = torch.from_numpy(e["global_cond"])
    xs, eps = e[f"{run}_step_x"], e[f"{run}_step_eps"]
    vn = e.get(f"{run}_variance_noise")
    with torch.inference_mode():
        for i, t in enumerate(e[f"{run}_timesteps"]):
            x = torch.from_numpy(xs[i])
            out = pol.denoise(x, torch.tensor([int(t)]), gc).numpy()
            np.testing.assert_allclose(out, eps[i], rtol=0, atol=NORM_TOL, err_msg=f"{run} step {i} (t={t}) eps")
            nxt = pol.sampler.step(i, torch.from_numpy(eps[i]), x,
                                   None if vn is None else torch.from_numpy(vn[i])).numpy()
            want = xs[i + 1] if i + 1 < len(xs) else e[f"{run}_naction_pred"]
            np.testing.assert_allclose(nxt, want, rtol=0, atol=NORM_TOL, err_msg=f"{run} step {i} (t={t}) x_prev")


@pytest.mark.parametrize("run", list(RUNS))
def test_full_trajectory_from_recorded_noise(ck, run):
    if run not in ck.policies:
        pytest.skip(f"{ck.name} has no {run} recording")
    pol = ck.policies[run]
    e = ck.exp
    noise = e[f"{run}_noise"]
    with torch.inference_mode():
        gc = pol.encode(ck.obs())
        vn = e.get(f"{run}_variance_noise")
        naction = pol.sample(gc, torch.from_numpy(noise), None if vn is None else torch.from_numpy(vn))
        action = pol.unnormalize_action(naction).numpy()
    np.testing.assert_allclose(naction.numpy(), e[f"{run}_naction_pred"], rtol=0, atol=NORM_TOL)
    raw_tol = 1e-5 * ck.action_range
    np.testing.assert_allclose(action, e[f"{run}_action_pred"], rtol=0, atol=raw_tol)
    if vn is None:  # the runtime entry point, deterministic samplers
        chunk = pol.predict_chunk(ck.obs(), noise=noise[0])
        np.testing.assert_allclose(chunk, e[f"{run}_action_pred"][0], rtol=0, atol=raw_tol)
        np.testing.assert_allclose(chunk[pol.action_slice], e[f"{run}_action"][0], rtol=0, atol=raw_tol)
    if run == "ddim10" and "nonema_ddim10_action_pred" in e:
        assert np.abs(action - e["nonema_ddim10_action_pred"]).max() > 1.0
