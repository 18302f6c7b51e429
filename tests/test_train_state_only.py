"""A state-only policy (spec image_features {}, as Push-T's pusht_state) trains without decoding one video
frame: the camera feature is left out of the read, and the state/action/extra arrays are the ones an image
read gives. An image policy, and open_episodes' other users (INT8 calibration), still get the frames.

The video decoder is the real one, wrapped to count its calls (edgedp.datasets.video.decode)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from edgedp.datasets import video  # noqa: E402
from edgedp.datasets.episodes import open_episodes  # noqa: E402
from edgedp.sim_task.train import InMemoryData  # noqa: E402
from test_datasets_record import _cli  # noqa: E402

# 1-step trainings of a tiny U-Net: a few seconds on a shared 2-core machine.
STATE_ONLY = ["--set", "image_features={}", "--set", "normalization.modes={observation.state: min_max, action: min_max}",
              "--set", "unet.down_dims=[16,32]",
              "--set", "unet.diffusion_step_embed_dim=16", "--steps", "1", "--batch", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two short episodes recorded by `edgedp record` (a LeRobot v3.0 set with one camera video)."""
    root = tmp_path_factory.mktemp("state_only") / "ds"
    r = _cli("record", "--out", str(root), "--episodes", "2", "--steps", "8")
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture()
def decodes(monkeypatch):
    """Counts calls of the real video decoder (reader.py calls it as video.decode)."""
    calls = []
    real = video.decode

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(video, "decode", counting)
    return calls


def test_state_only_training_decodes_no_video(recorded, tmp_path, decodes):
    r = _cli("train", str(recorded), "--out", str(tmp_path / "ck"), *STATE_ONLY)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    assert decodes == []


def test_state_only_data_equals_the_image_read_without_decoding(recorded, decodes):
    plain = InMemoryData(open_episodes(recorded), 2, 16, with_images=False)
    assert decodes == [] and plain.images is None
    full = InMemoryData(open_episodes(recorded), 2, 16)  # an image policy: frames decoded as before
    assert len(decodes) == 2 and full.images.shape[0] == len(full.state)
    assert torch.equal(plain.state, full.state) and torch.equal(plain.action, full.action)
    assert plain.extra.keys() == full.extra.keys() and all(torch.equal(plain.extra[k], full.extra[k]) for k in full.extra)
    assert torch.equal(plain.windows.index, full.windows.index) and plain.num_episodes == full.num_episodes == 2
    obs, action = plain.batch(torch.arange(len(plain.windows)))
    obs_full, action_full = full.batch(torch.arange(len(full.windows)))
    assert "observation.image" not in obs and torch.equal(action, action_full)
    assert torch.equal(obs["observation.state"], obs_full["observation.state"])


def test_calibration_default_still_reads_frames(recorded, decodes):
    """open_episodes' default (what INT8 calibration uses) keeps the camera feature."""
    ds = open_episodes(recorded)
    ep = ds.load_episode(0)
    assert ep["observation.image"].shape[1:] == (96, 96, 3) and len(decodes) == 1
    no_img = ds.load_episode(0, images=False)
    assert "observation.image" not in no_img and len(decodes) == 1
    for k in no_img:
        np.testing.assert_array_equal(no_img[k], ep[k])


def test_npz_set_reads_the_same_without_images(tmp_path):
    from edgedp.sim_task.dataset import DatasetWriter, EpisodeDataset
    from edgedp.sim_task.expert import ExpertConfig, TaskConfig, record_episode

    root = tmp_path / "npz"
    w = DatasetWriter.create(root, fps=10, image_size=96, joint_names=["shoulder", "elbow"], settings={})
    for seed in range(2):
        w.add(record_episode(TaskConfig(steps=6), ExpertConfig(), seed))
    with_img, without = EpisodeDataset(root).flat(), EpisodeDataset(root).flat(images=False)
    assert without.image is None and with_img.image.shape == (12, 96, 96, 3)
    for k in ("state", "action", "episode_ends"):
        np.testing.assert_array_equal(getattr(without, k), getattr(with_img, k))
