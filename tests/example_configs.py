"""Config dicts for tests: a shipped example whose relative paths still work after it is copied elsewhere, and
the small two-joint virtual-camera robot most config tests start from."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str = "sim.yaml") -> dict:
    path = EXAMPLES / name
    data = yaml.safe_load(path.read_text())
    ck = data["policy"]["checkpoint"]
    if not ck.startswith("preset:") and not Path(ck).is_absolute():
        data["policy"]["checkpoint"] = str((path.parent / ck).resolve())
    return data


_TWO_JOINT_ROBOT = {
    "robot": {
        "name": "arm",
        "bus": {"port": "emulator", "baud": 1000000},
        "joints": [
            {"name": "shoulder", "id": 1, "model": "xm430-w350", "min": -2.0, "max": 2.0,
             "max_velocity": 3.0, "max_acceleration": 20.0},
            {"name": "elbow", "id": 2, "model": "xm430-w350", "min": -2.5, "max": 2.5,
             "max_velocity": 3.0, "max_acceleration": 20.0},
        ],
    },
    "cameras": [{"name": "top", "kind": "virtual", "width": 96, "height": 96, "fps": 30}],
    "policy": {"checkpoint": "preset:small", "backend": "eager", "precision": "fp32", "steps": 10},
}


def two_joint_config(**sections) -> dict:
    """A fresh copy of the two-joint emulated arm with a 96x96 virtual camera and preset:small; keyword
    arguments add or replace top-level sections (e.g. rates=..., safety=...)."""
    data = copy.deepcopy(_TWO_JOINT_ROBOT)
    data.update(copy.deepcopy(sections))
    return data
