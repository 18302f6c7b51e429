"""`edgedp eval --video` on the Push-T state config (no camera: the policy sees keypoints) films the scene's own
render, and `--sampler` / `--join` reach the built parts and the results document."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gym_pusht", reason="Push-T needs gym-pusht: pip install 'edgedp[pusht]'")
av = pytest.importorskip("av")

from edgedp.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "examples" / "pusht_state.yaml"  # the trained state checkpoint, no camera
PUSHER_RGB = np.array([65, 105, 225])  # gym-pusht's agent (RoyalBlue)
T_RGB = np.array([119, 136, 153])  # gym-pusht's block (LightSlateGray)


def _share(frame: np.ndarray, rgb: np.ndarray, tol: float = 40.0) -> float:
    return float((np.abs(frame.astype(np.int16) - rgb).max(axis=-1) < tol).mean())


def test_state_config_video_shows_the_scene_and_flags_are_recorded(tmp_path):
    out, vids = tmp_path / "eval.json", tmp_path / "videos"
    code = main(["eval", str(STATE), "--episodes", "1", "--episode-timeout", "1.5", "--json", str(out),
                 "--video", str(vids), "--sampler", "ddpm", "--steps", "10", "--join", "inpaint"])
    assert code == 0
    (mp4,) = sorted(vids.glob("*.mp4"))
    assert mp4.name.endswith("_ep000_seed100000.mp4")
    with av.open(str(mp4)) as f:
        frames = [x.to_ndarray(format="rgb24") for x in f.decode(video=0)]
    assert len(frames) > 1
    h, w, _ = frames[0].shape
    assert h >= 384 and w >= 384  # enlarged from gym-pusht's 96 x 96, not a 16-value keypoint strip
    mid = frames[len(frames) // 2]
    assert _share(mid, PUSHER_RGB) > 0.0005  # the pusher is in the picture
    assert _share(mid, T_RGB) > 0.005  # and so is the T
    doc = json.loads(out.read_text())
    c = doc["runs"][0]["conditions"]
    assert (c["sampler"], c["join"], c["inpaint_form"], c["steps"]) == ("ddpm", "inpaint", "guided", 10)
    assert c["warm_start"] is False and c["warm_start_level"] is None
    assert doc["episode_errors"] == 0 and doc["interrupted"] is False


def test_eval_flags_reach_the_built_policy_and_planner():
    from edgedp.commands.eval import apply_overrides
    from edgedp.config import load_config
    from edgedp.evaluation.episodes import EvalSession

    cfg = load_config(STATE)
    apply_overrides(cfg, sampler="dpmsolver++", join="inpaint")
    parts = EvalSession(cfg).parts  # built by edgedp/app.py, nothing started
    assert parts.policy.scheduler_spec.kind == "dpmsolver++"  # the K-step loop the planner samples with
    assert parts.policy.sampler_options == {"inpaint": "guided"}  # join: inpaint reaches the sampler
    assert parts.servo.join == "inpaint"  # and the servo loop's chunk joiner

    cfg = load_config(STATE)
    apply_overrides(cfg, join="ensemble")
    parts = EvalSession(cfg).parts
    assert parts.servo.join == "ensemble" and parts.policy.sampler_options == {}
