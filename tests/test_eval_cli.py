"""`edgedp eval` end to end on the random small preset: the document's schema, and refusals before anything starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgedp.cli import main

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "examples" / "sim.yaml"


def test_two_short_episodes_write_the_documented_json(tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", str(SIM), "--episodes", "2", "--episode-timeout", "1.5", "--seed", "3", "--json", str(out),
                 "--checkpoint", "preset:small", "--steps", "10"])
    assert code == 0
    doc = json.loads(out.read_text())
    for key in ("success_rate", "episodes", "time_to_success", "join_jump_max", "conditions", "runs"):
        assert key in doc
    assert 0.0 <= doc["success_rate"] <= 1.0
    lo, hi = doc["success_ci95"]
    assert 0.0 <= lo <= doc["success_rate"] <= hi <= 1.0 and hi - lo > 0.3  # two episodes prove little
    assert doc["episodes"] == 2
    assert set(doc["time_to_success"]) >= {"mean", "median"}
    assert set(doc["join_jump_max"]) >= {"position_rad", "velocity_rad_s"}
    c = doc["conditions"]
    for key in ("checkpoint", "backend", "precision", "latency_ms", "sync", "task", "steps"):
        assert key in c
    assert (c["checkpoint"], c["backend"], c["precision"], c["task"]) == ("preset:small", "eager", "fp32", "reach")
    (run,) = doc["runs"]
    assert run["conditions"]["latency_ms"] == 0.0 and run["conditions"]["sync"] is False
    rows = run["per_episode"]
    assert [r["seed"] for r in rows] == [3, 4]
    for r in rows:
        assert isinstance(r["success"], bool)
        assert r["chunks"] >= 1  # the runtime really planned
        assert r["stopped_by"] in ("success", "duration")
        assert r["final_distance_m"] >= 0 and r["min_distance_m"] <= r["final_distance_m"] + 1e-9
        assert (r["time_to_success_s"] is None) == (not r["success"])
        assert len(r["targets"]) == 1
    assert run["success_rate"] == doc["success_rate"]
    assert "edgedp eval" in capsys.readouterr().out  # the table


def _config(tmp_path, **changes) -> Path:
    cfg = yaml.safe_load(SIM.read_text())
    cfg["policy"]["checkpoint"] = "preset:small"  # the copy lives elsewhere: no relative checkpoint path
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("args, message", [
    (["--episodes", "0"], "--episodes: must be at least 1"),
    (["--episodes", "1", "--latency-ms", "0,fast"], "--latency-ms: 'fast' is not a number"),
    (["--episodes", "1", "--latency-ms", "-5"], "--latency-ms: -5 must be"),
    (["--episodes", "1", "--episode-timeout", "0"], "--episode-timeout: must be a positive"),
    (["--episodes", "1", "--json", "/nonexistent/dir/x.json"], "--json: folder /nonexistent/dir does not exist"),
    (["--episodes", "1", "--backend", "warp"], "--backend: unknown backend 'warp'"),
    (["--episodes", "1", "--steps", "many"], "--steps: 'many' is not a whole number"),
    (["--episodes", "1", "--sampler", "euler"], "--sampler: unknown sampler 'euler' (allowed: ddim, ddpm, dpmsolver++"),
    (["--episodes", "1", "--join", "blend"], "--join: unknown join 'blend' (allowed: crossfade, ensemble, inpaint)"),
    (["--episodes", "1", "--checkpoint", "/nonexistent/ckpt"], "--checkpoint: /nonexistent/ckpt does not exist"),
    (["--episodes", "1", "--warm-start", "yes"], "--warm-start: unknown warm-start 'yes' (allowed: on, off)"),
    (["--episodes", "1", "--inpaint-overlap", "half"],
     "--inpaint-overlap: unknown inpaint-overlap 'half' (allowed: soft, none)"),
    (["--episodes", "1", "--inpaint-form", "blend"],
     "--inpaint-form: unknown inpaint-form 'blend' (allowed: replace, guided)"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert main(["eval", str(SIM), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("changes, message", [
    ({"scene.task": "none"}, "scene.task: eval needs a task with targets"),
    ({"robot.bus.port": "/dev/null"}, "robot.bus.port: eval runs on the simulated arm"),
])
def test_configs_without_a_simulated_task_are_refused(tmp_path, capsys, changes, message):
    assert main(["eval", str(_config(tmp_path, **changes)), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag, expected", [("on", True), ("off", False)])
def test_warm_start_flag_reaches_the_policy_settings(flag, expected):
    from edgedp.commands.eval import apply_overrides
    from edgedp.config import load_config

    cfg = load_config(SIM)
    cfg.policy.warm_start = not expected
    apply_overrides(cfg, warm_start=flag)
    assert cfg.policy.warm_start is expected
