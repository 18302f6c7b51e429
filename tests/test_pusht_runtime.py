"""Push-T through the real runtime: `edgedp eval` on a state (keypoint) policy and an image policy, untrained.

What is checked is the wiring, not skill: the emulated servos move the pusher, the keypoint sensor or the
virtual camera feeds the planner, gym-pusht's coverage reaches the JSON, held-out seeds are used."""
from __future__ import annotations

import json

import time

import numpy as np
import pytest
import yaml

pytest.importorskip("gym_pusht", reason="Push-T needs gym-pusht: pip install 'edgedp[pusht]'")

from edgedp.cli import main  # noqa: E402
from firmware_bridge.sim.pusht import KEYPOINT_KEY  # noqa: E402
from tests.example_configs import load_example  # noqa: E402


def _state_checkpoint(path):
    """A randomly initialised state-only policy with gym-pusht's keypoints (what `edgedp train --set` makes)."""
    import torch

    from models.native import save_native
    from models.policy import DiffusionPolicy
    from models.presets import load_preset
    from models.spec import PolicySpec

    d = load_preset("small").to_dict()
    d.update(image_features={}, state_features={"observation.state": [2], KEYPOINT_KEY: [16]}, name="pusht_state_test")
    d["normalization"]["modes"] = {"observation.state": "min_max", KEYPOINT_KEY: "min_max", "action": "min_max"}
    spec = PolicySpec.from_dict(d)
    spec.validate()
    torch.manual_seed(0)
    policy = DiffusionPolicy(spec, seed=0)
    policy.normalizers["observation.state"].set_stats(min=torch.full((2,), -2.4), max=torch.full((2,), 2.4))
    policy.normalizers[KEYPOINT_KEY].set_stats(min=torch.zeros(16), max=torch.full((16,), 512.0))
    policy.normalizers["action"].set_stats(min=torch.full((2,), -0.3), max=torch.full((2,), 0.3))
    save_native(policy, path)
    return path


def _config(tmp_path, checkpoint, example: str = "pusht.yaml") -> str:
    data = load_example(example)
    data["policy"]["checkpoint"] = str(checkpoint)
    data["telemetry"] = {"live": False, "plot": False}
    path = tmp_path / "pusht.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_state_policy_runs_on_keypoints_and_moves_the_pusher(tmp_path):
    ck = _state_checkpoint(tmp_path / "state_ck")
    out = tmp_path / "eval.json"
    code = main(["eval", _config(tmp_path, ck, "pusht_state.yaml"), "--episodes", "1", "--episode-timeout", "2.5", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    (row,) = doc["runs"][0]["per_episode"]
    assert doc["conditions"]["task"] == "pusht" and row["seed"] == 100000  # held out from recording (0..)
    assert row["chunks"] >= 2  # the planner ran on keypoint observations
    assert 0.0 <= row["max_coverage"] <= 1.0 and doc["max_coverage"]["mean"] == row["max_coverage"]
    assert row["success"] is False and row["time_to_success_s"] is None  # random weights: no luck expected


def test_image_policy_eval_through_the_virtual_realsense(tmp_path):
    from edgedp.config import load_config
    from edgedp.evaluation.episodes import Condition, EvalSession

    cfg = load_config(_config(tmp_path, "preset:small"))
    with EvalSession(cfg) as session:
        r = session.run_episode(0, 100003, Condition(), timeout=2.0)
        scene = session.scene
        # Held after the stop: the pusher is where the emulated servos are, through the gantry. The physics
        # thread moves the pusher to the servos' position on its own 100 Hz ticks, so while the servos still
        # settle it trails by up to one tick: compare once they rest (polled, no timing assumed).
        deadline = time.monotonic() + 5.0
        while True:
            servo = session.parts.emulator.present_positions_rad()  # the emulator's motor model, by servo id
            q = np.array([servo[1], servo[2]])
            if np.allclose(scene.gantry.to_table(q), scene.pusher(), atol=1.0) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert np.allclose(scene.gantry.to_table(q), scene.pusher(), atol=1.0)
    assert scene.current_seed == 100003
    assert r.chunks >= 1 and r.max_coverage is not None and 0.0 <= r.final_coverage <= 1.0
