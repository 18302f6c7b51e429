"""The run config rejects each kind of mistake with one line that names the field, and accepts good files."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgedp.config import ConfigError, load_config, parse_config, check_against_policy
from tests.example_configs import two_joint_config

GOOD = two_joint_config(rates={"servo_hz": 500}, safety={"on_stop": "hold"})
GOOD["robot"]["joints"][1].update(direction=-1, zero_offset=0.1)


def _with(path: str, value, base=None):
    """Copy GOOD and set a dotted path (list indices as ints) to value; value None with DELETE removes it."""
    data = copy.deepcopy(base or GOOD)
    parts = path.split(".")
    node = data
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    last = parts[-1]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


DELETE = object()


def _errors(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base=Path.cwd())
    return info.value.problems


def test_good_config_parses_and_fills_defaults():
    cfg = parse_config(copy.deepcopy(GOOD), base=Path.cwd())
    assert cfg.robot.joints[1].direction == -1
    assert cfg.safety.on_stop == "hold"
    assert cfg.scene is not None  # a sim run gets a default scene


BAD_CASES = [
    # (description, mutation path, value, expected field path in the message, expected hint)
    ("unknown top-level key", "colour", "red", "colour", "unknown key"),
    ("unknown nested key", "robot.bus.speed", 5, "robot.bus.speed", "unknown key"),
    ("wrong type for rate", "rates.servo_hz", "fast", "rates.servo_hz", "number"),
    ("rate of zero", "rates.servo_hz", 0, "rates.servo_hz", "50"),
    ("rate above 1000 Hz", "rates.servo_hz", 2000, "rates.servo_hz", "1000"),
    ("min above max", "robot.joints.0.min", 3.0, "robot.joints[0]", "min"),
    ("duplicate joint id", "robot.joints.1.id", 1, "robot.joints[1].id", "duplicate"),
    ("unknown servo model", "robot.joints.0.model", "mx-28", "robot.joints[0].model", "xm430-w350"),
    ("direction not +-1", "robot.joints.0.direction", 2, "robot.joints[0].direction", "1"),
    ("negative max velocity", "robot.joints.0.max_velocity", -1, "robot.joints[0].max_velocity", "greater than 0"),
    ("bad baud", "robot.bus.baud", 12345, "robot.bus.baud", "4000000"),
    ("unknown backend", "policy.backend", "magic", "policy.backend", "tensorrt"),
    ("unknown precision", "policy.precision", "fp8", "policy.precision", "int8"),
    ("missing checkpoint file", "policy.checkpoint", "/nonexistent/ckpt", "policy.checkpoint", "not found"),
    ("unknown preset", "policy.checkpoint", "preset:nope", "policy.checkpoint", "small"),
    ("realsense resolution", "cameras.0", {"name": "rs", "kind": "realsense", "width": 100, "height": 100, "fps": 30},
     "cameras[0].width", "640x480"),
    ("realsense fps", "cameras.0", {"name": "rs", "kind": "realsense", "width": 640, "height": 480, "fps": 25},
     "cameras[0].fps", "30"),
    ("camera kind", "cameras.0.kind", "webcam", "cameras[0].kind", "realsense"),
    ("file camera without file", "cameras.0", {"name": "f", "kind": "file"}, "cameras[0].file", ".bag"),
    ("missing camera file", "cameras.0", {"name": "f", "kind": "file", "file": "nope.bag"}, "cameras[0].file", "not found"),
    ("missing joints", "robot.joints", DELETE, "robot.joints", "missing"),
    ("empty joints", "robot.joints", [], "robot.joints", "at least 1"),
    ("K of zero", "policy.steps", 0, "policy.steps", "greater than or equal to 1"),
    ("bad device", "policy.device", "tpu", "policy.device", "cuda"),
    ("bad on_stop", "safety.on_stop", "explode", "safety.on_stop", "torque_off"),
    ("bad interpolation", "safety.interpolation", "spline", "safety.interpolation", "cubic"),
    ("duplicate joint name", "robot.joints.1.name", "shoulder", "robot.joints[1].name", "duplicate"),
]


@pytest.mark.parametrize("desc,path,value,field,hint", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_names_the_field(desc, path, value, field, hint):
    problems = _errors(_with(path, value))
    assert len(problems) >= 1
    line = next((p for p in problems if p.startswith(field)), None)
    assert line is not None, f"{desc}: no message names {field}: {problems}"
    assert hint.lower() in line.lower(), f"{desc}: {line!r} lacks {hint!r}"
    assert "\n" not in line


def test_n_action_steps_larger_than_horizon():
    cfg = parse_config(_with("policy.n_action_steps", 20), base=Path.cwd())
    with pytest.raises(ConfigError) as info:
        check_against_policy(cfg, horizon=16, n_obs_steps=2, image_keys=["observation.image"])
    assert info.value.problems[0].startswith("policy.n_action_steps")
    assert "15" in info.value.problems[0]


def test_every_problem_reported_at_once():
    data = _with("rates.servo_hz", 0)
    data = _with("policy.backend", "magic", base=data)
    problems = _errors(data)
    assert any(p.startswith("rates.servo_hz") for p in problems)
    assert any(p.startswith("policy.backend") for p in problems)


def test_relative_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "ck").mkdir()
    data = _with("policy.checkpoint", "ck")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert Path(cfg.policy.checkpoint) == tmp_path / "ck"


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("robot: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1 and "not valid YAML" in info.value.problems[0]


def test_cli_check_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("robot.joints.1.id", 1)))
    ok = subprocess.run([sys.executable, "-m", "edgedp.cli", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "shoulder" in ok.stdout
    res = subprocess.run([sys.executable, "-m", "edgedp.cli", "check", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[0].startswith("edgedp check: robot.joints[1].id: duplicate joint id 1")


def test_sync_planning_switch_defaults_off_and_parses():
    assert parse_config(copy.deepcopy(GOOD), base=Path.cwd()).policy.sync is False
    assert parse_config(_with("policy.sync", True), base=Path.cwd()).policy.sync is True
    assert any(p.startswith("policy.sync") for p in _errors(_with("policy.sync", "sometimes")))
