"""Training: the loss goes down on a tiny model, the checkpoint loads, and the recipe's pieces are right."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgedp.sim_task.dataset import DatasetWriter, EpisodeDataset
from edgedp.sim_task.expert import ExpertConfig, TaskConfig, record_episode
from edgedp.sim_task.train import EMA, InMemoryData, TrainConfig, WindowSampler, cosine_with_warmup, make_policy, train

# A tiny model with the small preset's layout: cheap enough for a test on a shared 2-core machine.
TINY = {"encoder.width": 16, "encoder.num_keypoints": 8, "encoder.feature_dim": 16, "encoder.resize_shape": [36, 36],
        "encoder.crop_shape": [32, 32], "unet.down_dims": [16, 32], "unet.diffusion_step_embed_dim": 16}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "ds"
    w = DatasetWriter.create(root, fps=10, image_size=96, joint_names=["shoulder", "elbow"], settings={})
    for seed in range(6):
        w.add(record_episode(TaskConfig(steps=12), ExpertConfig(), seed))
    return root


def _fixed_loss(policy, data: InMemoryData, regression: bool = False) -> float:
    """Loss on a fixed batch with fixed k and noise, center crop (eval mode), no gradient."""
    from edgedp.sim_task.train import regression_loss

    was = policy.training
    policy.eval()
    obs, action = data.batch(torch.arange(0, len(data.windows), 2))
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        loss = regression_loss(policy, obs, action, g) if regression else policy.compute_loss(obs, action, generator=g)
    policy.train(was)
    return float(loss)


@pytest.mark.parametrize("regression", [False, True])
def test_tiny_training_lowers_the_loss_and_writes_a_loadable_checkpoint(dataset, tmp_path, regression):
    from models.native import load_native, read_spec

    cfg = TrainConfig(steps=40, batch=16, lr=3e-3, warmup=5, seed=0, save_every=20, regression=regression,
                      spec_overrides=TINY)
    data = InMemoryData(EpisodeDataset(dataset), 2, 16)
    before = _fixed_loss(make_policy("small", data, cfg), data, regression)
    out = tmp_path / "ckpt"
    result = train(dataset, "small", out, cfg)
    after = _fixed_loss(result.policy, data, regression)
    assert after < 0.6 * before, (before, after)
    assert len(result.losses) == 40 and all(math.isfinite(x) for x in result.losses)

    policy = load_native(out)
    for name, p in policy.state_dict().items():  # the file holds the EMA weights
        torch.testing.assert_close(p, result.policy.state_dict()[name])
    stats = data.stats()
    torch.testing.assert_close(policy.normalizers["action"].min, stats["action"]["min"])
    torch.testing.assert_close(policy.normalizers["observation.state"].max, stats["observation.state"]["max"])
    _, prov = read_spec(out)
    prov = prov["provenance"]
    assert policy.spec.encoder.width == 16 and prov["trained_steps"] == 40 and prov["regression"] is regression
    ep = EpisodeDataset(dataset).load_episode(0)
    chunk = policy.predict_chunk({"observation.image": ep["observation.image"][:2], "observation.state": ep["observation.state"][:2]})
    assert chunk.shape == (16, 2) and np.all(np.isfinite(chunk))
    if regression:
        assert policy.num_inference_steps == 1 and policy.scheduler_spec.prediction_type == "sample"
        # Trained at the one timestep the K=1 sampler runs (trailing spacing: the noisiest one).
        assert int(policy.sampler.scheduler.table.timesteps[0]) == 99


def test_windows_pad_at_episode_edges_and_never_cross_episodes():
    w = WindowSampler(np.array([3, 8]), n_obs_steps=2, horizon=4)
    idx = w.index.numpy()
    assert idx.shape == (8, 4)
    np.testing.assert_array_equal(idx[0], [0, 0, 1, 2])  # before the start: the first frame repeated
    np.testing.assert_array_equal(idx[2], [1, 2, 2, 2])  # after the end: the last frame repeated
    np.testing.assert_array_equal(idx[3], [3, 3, 4, 5])  # the second episode starts fresh
    np.testing.assert_array_equal(idx[7], [6, 7, 7, 7])


def test_ema_follows_the_diffusion_policy_schedule():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, power=0.75, max_value=0.9999)
    assert ema.decay() == 0.0  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, model.weight)
    ema.step = 999
    assert ema.decay() == pytest.approx(1 - 1000 ** -0.75)
    ema.step = 10 ** 9
    assert ema.decay() == 0.9999


def test_cosine_schedule_with_warmup():
    f = cosine_with_warmup(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in-process (its own argument parsing and one-line errors), captured like a subprocess."""
    import contextlib
    import io

    from edgedp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_train_cli(dataset, tmp_path):
    out = tmp_path / "ck"
    args = ["train", str(dataset), "--out", str(out), "--steps", "2", "--batch", "4"]
    args += [f"--set={k}={v}" for k, v in TINY.items()]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert "loss first" in r.stdout and (out / "model.safetensors").is_file()
    r = _cli(*args)
    assert r.returncode == 2 and "--force" in r.stderr
    r = _cli("train", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "dataset not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("train", str(dataset), "--out", str(tmp_path / "x"), "--preset", "huge")
    assert r.returncode == 2 and "unknown preset" in r.stderr
    r = _cli("train", str(dataset), "--out", str(tmp_path / "x"), "--set", "encoder.norm=layer")
    assert r.returncode == 2 and "encoder.norm" in r.stderr and not (tmp_path / "x").exists()


def test_shipped_checkpoint_reaches_targets_closed_loop():
    """models/trained/sim_reach on held-out seeds 0-9 (measured 8/10); a random policy of the same preset does not."""
    from edgedp.policy_loading import load_policy
    from edgedp.sim_task.rollout import evaluate

    torch.set_num_threads(1)
    task, expert = TaskConfig(), ExpertConfig()
    trained = evaluate(load_policy("models/trained/sim_reach", seed=0), task, expert, range(10))
    assert trained["success_rate"] >= 0.6, trained["success_rate"]
    assert trained["final_distance_median_m"] < 0.02
    random = evaluate(load_policy("preset:small", seed=0), task, expert, range(10))
    assert random["success_rate"] <= 0.2 and random["final_distance_median_m"] > 0.05, random["final_distance_median_m"]
