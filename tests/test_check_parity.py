"""`edgedp check` refuses exactly what `edgedp run` refuses, with the same one line and exit 2.

Both commands go through edgedp.app.validate; this table is what keeps them from drifting apart again. Each
bad config is handed to the real CLI entry point twice (check, then run); run must stop before anything
opens (it never reaches device construction, and no emulator link appears).
"""
from __future__ import annotations

import copy
import glob
import os
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from edgedp.cli import main
from tests.example_configs import two_joint_config

GOOD = two_joint_config(telemetry={"live": False, "plot": False})


def _set(data: dict, path: str, value) -> dict:
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


# (id, {dotted path: value} (callables get tmp_path), start of the expected line)
CASES = [
    ("no camera for the image feature", {"cameras": []}, "cameras: the checkpoint needs images for observation.image"),
    ("one joint, two actions", {"robot.joints": [GOOD["robot"]["joints"][0]]},
     "policy.checkpoint: actions have 2 dimensions but robot.joints has 1 joints"),
    ("bad state_key", {"policy.state_key": "observation.nope"},
     "policy.state_key: 'observation.nope' is not a state feature"),
    ("bad policy_key", {"cameras.0.policy_key": "observation.nope"},
     "cameras[0].policy_key: 'observation.nope' is not an image feature"),
    ("T_a beyond the horizon", {"policy.n_action_steps": 40}, "policy.n_action_steps: 40 is larger than"),
    ("action period under two servo ticks", {"policy.action_period": 0.001}, "policy.action_period: 0.001 s"),
    ("steps beyond the training schedule", {"policy.steps": 1000}, "policy.steps:"),
    ("missing serial port", {"robot.bus.port": "/dev/ttyUSB_edgedp_none"},
     "robot.bus.port: /dev/ttyUSB_edgedp_none does not exist"),
    ("virtual camera on a real bus", {"robot.bus.port": "/dev/null"},
     "cameras: virtual camera 'top' renders the simulated arm and needs robot.bus.port: emulator"),
    ("missing telemetry folder", {"telemetry.path": "/nonexistent_edgedp/run.json"},
     "telemetry.path: folder /nonexistent_edgedp does not exist"),
    ("telemetry path is a folder", {"telemetry.path": lambda t: str(t)}, "telemetry.path: "),
    ("time-offset file missing", {"robot.time_offset_file": "/nonexistent_edgedp/offsets.yaml"},
     "robot.time_offset_file: file not found: /nonexistent_edgedp/offsets.yaml"),
    ("time-offset file without camera delay",
     {"robot.time_offset_file": lambda t: _write(t, "off.yaml", "command_delay_s: 0.01\n")},
     "robot.time_offset_file: "),
    ("time-offset delay implausible",
     {"robot.time_offset_file": lambda t: _write(t, "off.yaml", "camera_delay_s: 5.0\n")}, "robot.time_offset_file: "),
    ("calibration file missing", {"robot.calibration_file": "/nonexistent_edgedp/joints.yaml"},
     "robot.calibration_file: /nonexistent_edgedp/joints.yaml: file not found"),
    ("calibration file of another robot",
     {"robot.calibration_file": lambda t: _write(t, "j.yaml", yaml.safe_dump(
         {"joints": [{"name": "wrist", "id": 3, "zero_offset": 0.1, "direction": 1}]}))},
     "robot.calibration_file: "),
    ("calibration file with another servo id",
     {"robot.calibration_file": lambda t: _write(t, "j.yaml", yaml.safe_dump(
         {"joints": [{"name": "elbow", "id": 7, "zero_offset": 0.1, "direction": 1}]}))},
     "robot.calibration_file: "),
    ("calibration file direction 2",
     {"robot.calibration_file": lambda t: _write(t, "j.yaml", yaml.safe_dump(
         {"joints": [{"name": "elbow", "id": 2, "zero_offset": 0.1, "direction": 2}]}))},
     "robot.calibration_file: "),
    ("calibration file with a YAML alias (anchor bomb)",
     {"robot.calibration_file": lambda t: _write(t, "j.yaml", "a: &x [1, 2]\njoints: [*x, *x]\n")},
     "robot.calibration_file: "),
    ("calibration file not YAML",
     {"robot.calibration_file": lambda t: _write(t, "j.yaml", "joints: [unclosed\n")}, "robot.calibration_file: "),
]
CASES += [
    ("sampler that does not suit K", {"policy.sampler": "dpmsolver++", "policy.steps": 100}, "policy.sampler: "),
    ("Push-T gantry with three joints", {"scene": {"task": "pusht"}, "robot.joints": GOOD["robot"]["joints"] + [
        {"name": "wrist", "id": 3, "model": "xm430-w350", "min": -1.0, "max": 1.0, "max_velocity": 3.0,
         "max_acceleration": 20.0}]}, "policy.checkpoint: actions have 2 dimensions"),
]
if not torch.cuda.is_available():
    CASES += [
        ("tensorrt without a GPU", {"policy.backend": "tensorrt", "policy.precision": "fp16"},
         "policy.backend: backend tensorrt needs a CUDA GPU"),
        ("cuda without a GPU", {"policy.device": "cuda"}, "policy.backend: "),
    ]
else:
    import importlib.util

    if importlib.util.find_spec("torch_tensorrt") is None:
        CASES.append(("tensorrt without torch-tensorrt", {"policy.backend": "tensorrt", "policy.precision": "fp16",
                                                          "policy.device": "cuda"},
                      "policy.backend: backend tensorrt needs torch-tensorrt"))


def _links() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), f"edgedp-dxl-{os.getpid()}-*")))


@pytest.mark.parametrize("name,changes,expected", CASES, ids=[c[0] for c in CASES])
def test_check_and_run_refuse_identically(tmp_path, capsys, monkeypatch, name, changes, expected):
    import edgedp.app

    def no_devices(*_a, **_k):
        raise AssertionError("run went on to build devices although the config is bad")

    monkeypatch.setattr(edgedp.app, "build_devices", no_devices)
    data = copy.deepcopy(GOOD)
    for path, value in changes.items():
        _set(data, path, value(tmp_path) if callable(value) else value)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(data))
    before = _links()
    results = {}
    for command in ("check", "run"):
        code = main([command, str(cfg), "--duration", "1"] if command == "run" else [command, str(cfg)])
        out = capsys.readouterr()
        lines = [line for line in out.err.splitlines() if not line.startswith("notice:")]
        assert code == 2, f"{command}: exit {code}, stderr {out.err!r}"
        assert len(lines) == 1, f"{command}: {lines}"
        prefix = f"edgedp {command}: "
        assert lines[0].startswith(prefix)
        results[command] = lines[0][len(prefix):]
        assert "OK" not in out.out
    assert results["check"] == results["run"]
    assert results["check"].startswith(expected), results["check"]
    assert _links() == before  # run stopped before the emulator (or anything else) started


def test_good_config_passes_check(tmp_path, capsys):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(yaml.safe_dump(GOOD))
    assert main(["check", str(cfg)]) == 0
    assert "OK" in capsys.readouterr().out
