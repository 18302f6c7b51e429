"""LeRobot 0.4.4 checkpoint: the imported policy reproduces LeRobot's recorded outputs.

Normalized quantities at 1e-5; raw actions at 1e-5 x the action range (LeRobot's own rerun
differs by up to 6.4e-4 units at a range of ~500 from thread count alone). The state part of
the conditioning must match bit-exactly (same formula, same order).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint_import.convert import build_policy
from models.checkpoint_import.lerobot import read_lerobot

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
from sweep_check import missing_reference  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "lerobot"
NORM_TOL = 1e-5



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _dirs() -> list[str]:
    if not FIXTURES.is_dir():
        return ["pusht_1cam"]
    found = sorted(p.name for p in FIXTURES.iterdir() if (p / "pretrained_model" / "config.json").is_file())
    return found or ["pusht_1cam"]


@pytest.fixture(scope="module", params=_dirs())
def lr(request):
    d = FIXTURES / request.param
    if not (d / "pretrained_model" / "model.safetensors").is_file():
        missing_reference(f"reference fixture {d} not present (expected at <repo>/../shared/fixtures)")
    imp = read_lerobot(d / "pretrained_model")
    pol = build_policy(imp)
    exp = dict(np.load(d / "expected.npz"))
    cams = [k[len("raw."):] for k in exp if k.startswith("raw.observation.image")]
    obs = {k: exp[f"raw.{k}"] for k in cams}
    obs["observation.state"] = exp["raw.observation.state"]
    return imp, pol, exp, obs


def _range(imp) -> float:
    st = imp.normalization["action"].stats
    return float((st["max"] - st["min"]).max())


def test_normalized_inputs_match_preprocessor(lr):
    imp, pol, exp, obs = lr
    batch = pol.normalize_obs(pol.prepare_obs(obs))
    for k in obs:
        np.testing.assert_array_equal(batch[k][0].numpy(), exp[f"norm.{k}"], err_msg=k)


def test_global_cond(lr):
    imp, pol, exp, obs = lr
    gc = pol.encode(obs).numpy()
    np.testing.assert_allclose(gc, exp["global_cond"], rtol=0, atol=NORM_TOL)
    s = exp["raw.observation.state"].shape[-1]
    per = gc.shape[1] // pol.n_obs_steps
    for t in range(pol.n_obs_steps):  # state first in each frame, bit-exact
        np.testing.assert_array_equal(gc[0, t * per:t * per + s], exp["global_cond"][0, t * per:t * per + s])


def test_probes(lr):
    imp, pol, exp, obs = lr
    gc = torch.from_numpy(exp["global_cond"])
    with torch.inference_mode():
        for i, k in enumerate(exp["probe_k"]):
            out = pol.denoise(torch.from_numpy(exp["probe_x"][i:i + 1]), int(k), gc).numpy()
            np.testing.assert_allclose(out, exp["probe_out"][i:i + 1], rtol=0, atol=NORM_TOL, err_msg=f"k={k}")


def test_every_step(lr):
    imp, pol, exp, obs = lr
    np.testing.assert_array_equal(pol.sampler.timesteps.numpy(), exp["timesteps"])
    gc = torch.from_numpy(exp["global_cond"])
    x = torch.from_numpy(exp["noise"])
    noisy = [i for i, t in enumerate(exp["timesteps"]) if t > 0]
    with torch.inference_mode():
        for i, t in enumerate(exp["timesteps"]):
            out = pol.denoise(x, int(t), gc).numpy()
            np.testing.assert_allclose(out, exp["step_eps"][i], rtol=0, atol=NORM_TOL, err_msg=f"step {i} eps")
            vn = None
            if "step_noise" in exp and i in noisy:
                vn = torch.from_numpy(exp["step_noise"][noisy.index(i)])
            nxt = pol.sampler.step(i, torch.from_numpy(exp["step_eps"][i]), x, vn)
            np.testing.assert_allclose(nxt.numpy(), exp["step_samples"][i], rtol=0, atol=NORM_TOL, err_msg=f"step {i}")
            x = torch.from_numpy(exp["step_samples"][i])


def test_trajectory_chunk_and_episode_start(lr):
    imp, pol, exp, obs = lr
    raw_tol = 1e-5 * _range(imp)
    with torch.inference_mode():
        gc = pol.encode(obs)
        vn = None
        if "step_noise" in exp:  # DDPM: rows only for t > 0, in step order
            vn = torch.zeros((pol.num_inference_steps, *exp["noise"].shape))
            rows = [i for i, t in enumerate(exp["timesteps"]) if t > 0]
            for j, i in enumerate(rows):
                vn[i] = torch.from_numpy(exp["step_noise"][j])
        tn = pol.sample(gc, torch.from_numpy(exp["noise"]), vn)
        traj = pol.unnormalize_action(tn).numpy()
    np.testing.assert_allclose(tn.numpy(), exp["traj_norm"], rtol=0, atol=NORM_TOL)
    np.testing.assert_allclose(traj, exp["traj"], rtol=0, atol=raw_tol)
    np.testing.assert_allclose(traj[:, pol.action_slice], exp["chunk"], rtol=0, atol=raw_tol)
    if vn is None:
        chunk = pol.predict_chunk(obs, noise=exp["noise"])
        np.testing.assert_allclose(chunk, exp["traj"][0], rtol=0, atol=raw_tol)
        # Episode start: LeRobot fills the queue with copies of the current frame.
        first = {k: np.repeat(v[-1:], pol.n_obs_steps, axis=0) for k, v in obs.items()}
        start = pol.predict_chunk(first, noise=exp["noise"])[pol.action_slice]
        np.testing.assert_allclose(start, exp["start_actions"][0], rtol=0, atol=raw_tol)
