"""Every setting in the run config reaches the code that uses it.

The schema (edgedp.config.RunConfig) is walked for all leaf fields. Each must have a row in CHANGES: two valid
configs that differ in that field alone (plus whatever both share to make the field meaningful, e.g. a
RealSense camera for `exposure`). Both are assembled by edgedp.app exactly as `edgedp run` does, and what was
built (RunParts, ServoParams, the bus recipe, the emulator, cameras, scene, policy and sampler, summary, run
settings, files written) must differ. A field nobody reads leaves the two builds equal and fails here; a new
field without a row fails `test_every_leaf_field_has_a_row`.

ALLOWED lists the few fields that by design change nothing at build time, each with the reason and the test
that shows where it is used.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel

from edgedp.app import assemble
from edgedp.config import RunConfig, parse_config
from tests.example_configs import two_joint_config

ROOT = Path(__file__).resolve().parent.parent
TRAINED = str(ROOT / "models" / "trained" / "sim_reach")

BASE = two_joint_config(scene={"task": "reach"})
REALSENSE_CAM = [{"name": "front", "kind": "realsense", "serial": "000111", "width": 640, "height": 480, "fps": 30}]
NO_EMULATOR = {"robot.bus.port": "/dev/null", "cameras": REALSENSE_CAM}
HAVE_REALSENSE = importlib.util.find_spec("pyrealsense2") is not None
HAVE_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None
HAVE_PUSHT = importlib.util.find_spec("gym_pusht") is not None


def _calibration_file(tmp: Path) -> str:
    p = tmp / "joints.yaml"
    p.write_text(yaml.safe_dump({"joints": [{"name": "shoulder", "id": 1, "zero_offset": 0.25, "direction": -1}]}))
    return str(p)


def _offsets_file(tmp: Path) -> str:
    p = tmp / "offsets.yaml"
    p.write_text("camera_delay_s: 0.03\ncommand_delay_s: 0.01\n")
    return str(p)


def _recording(name: str):
    def make(tmp: Path) -> str:
        p = tmp / name
        p.write_bytes(b"not opened at build time")
        return str(p)
    return make


# leaf field (list items as []) -> (changes both builds share, value in build A, value in build B, skip reason)
# Values may be callables of tmp_path (files). Paths name a list item by index.
CHANGES: dict[str, tuple] = {
    "robot.name": ({}, {"robot.name": "arm"}, {"robot.name": "other"}),
    "robot.bus.port": (NO_EMULATOR, {"robot.bus.port": "/dev/null"}, {"robot.bus.port": "/dev/zero"}),
    "robot.bus.baud": ({}, {}, {"robot.bus.baud": 4000000}),
    "robot.bus.low_latency": ({}, {}, {"robot.bus.low_latency": False}),
    "robot.bus.fast_sync_read": ({}, {}, {"robot.bus.fast_sync_read": "off"}),
    "robot.joints[].name": ({}, {}, {"robot.joints.0.name": "upper"}),
    "robot.joints[].id": ({}, {}, {"robot.joints.0.id": 7}),
    "robot.joints[].model": ({}, {}, {"robot.joints.0.model": "xl430-w250"}),
    "robot.joints[].min": ({}, {}, {"robot.joints.0.min": -1.5}),
    "robot.joints[].max": ({}, {}, {"robot.joints.0.max": 1.5}),
    "robot.joints[].max_velocity": ({}, {}, {"robot.joints.0.max_velocity": 2.0}),
    "robot.joints[].max_acceleration": ({}, {}, {"robot.joints.0.max_acceleration": 10.0}),
    "robot.joints[].direction": ({}, {}, {"robot.joints.0.direction": -1}),
    "robot.joints[].zero_offset": ({}, {}, {"robot.joints.0.zero_offset": 0.2}),
    "robot.joints[].operating_mode": ({}, {}, {"robot.joints.0.operating_mode": "extended_position"}),
    "robot.calibration_file": ({}, {}, {"robot.calibration_file": _calibration_file}),
    "robot.time_offset_file": ({}, {}, {"robot.time_offset_file": _offsets_file}),
    "cameras[].name": ({}, {}, {"cameras.0.name": "overhead"}),
    "cameras[].kind": ({"robot.bus.port": "emulator", "cameras": [{**REALSENSE_CAM[0], "serial": None}]},
                       {"cameras.0.kind": "virtual"}, {"cameras.0.kind": "realsense"}),
    "cameras[].serial": ({"robot.bus.port": "/dev/null", "cameras": REALSENSE_CAM}, {}, {"cameras.0.serial": "222333"}),
    "cameras[].file": ({"robot.bus.port": "/dev/null", "cameras": [{"name": "rec", "kind": "file"}]},
                       {"cameras.0.file": _recording("a.bag")}, {"cameras.0.file": _recording("b.bag")}),
    "cameras[].width": ({}, {}, {"cameras.0.width": 128}),
    "cameras[].height": ({}, {}, {"cameras.0.height": 128}),
    "cameras[].fps": ({}, {}, {"cameras.0.fps": 15}),
    "cameras[].depth": ({}, {}, {"cameras.0.depth": True}),
    "cameras[].exposure": (NO_EMULATOR, {}, {"cameras.0.exposure": 200.0}),
    "cameras[].white_balance": (NO_EMULATOR, {}, {"cameras.0.white_balance": 4500.0}),
    # two cameras: in order the first feeds the image; with policy_key the second does
    "cameras[].policy_key": ({"cameras": BASE["cameras"] + [{"name": "side", "kind": "virtual", "width": 64,
                                                             "height": 64, "fps": 30}]},
                             {}, {"cameras.1.policy_key": "observation.image"}),
    "policy.checkpoint": ({}, {}, {"policy.checkpoint": TRAINED}),
    "policy.backend": ({}, {}, {"policy.backend": "onnxruntime"}, None if HAVE_ONNXRUNTIME else "needs onnxruntime"),
    "policy.precision": ({}, {}, {"policy.precision": "bf16"}),
    "policy.device": ({}, {}, {"policy.device": "cuda"}, None if torch.cuda.is_available() else "needs a CUDA GPU"),
    "policy.steps": ({}, {}, {"policy.steps": 5}),
    "policy.sampler": ({}, {}, {"policy.sampler": "ddpm"}),
    "policy.warm_start": ({}, {}, {"policy.warm_start": True}),
    "policy.warm_start_level": ({"policy.warm_start": True}, {}, {"policy.warm_start_level": 0.3}),
    "policy.timesteps": ({"policy.sampler": "dpmsolver++", "policy.steps": 4}, {},
                         {"policy.timesteps": [90, 60, 16, 2]}),
    "policy.n_action_steps": ({}, {}, {"policy.n_action_steps": 4}),
    "policy.action_period": ({}, {}, {"policy.action_period": 0.2}),
    "policy.seed": ({}, {}, {"policy.seed": 1}),
    "policy.cache_dir": ({}, {"policy.cache_dir": lambda t: str(t / "cache_a")},
                         {"policy.cache_dir": lambda t: str(t / "cache_b")}),
    "policy.extra_latency_ms": ({}, {}, {"policy.extra_latency_ms": 5.0}),
    "policy.action_lead_periods": ({}, {}, {"policy.action_lead_periods": 1.0}),
    "policy.sync": ({}, {}, {"policy.sync": True}),
    "rates.servo_hz": ({}, {}, {"rates.servo_hz": 250}),
    "rates.max_observation_age": ({}, {}, {"rates.max_observation_age": 0.5}),
    "rates.servo_in_process": ({}, {"rates.servo_in_process": True}, {"rates.servo_in_process": False}),
    "safety.on_stop": ({}, {}, {"safety.on_stop": "torque_off"}),
    "safety.watchdog_failed_ticks": ({}, {}, {"safety.watchdog_failed_ticks": 3}),
    "safety.start_ramp_time": ({}, {}, {"safety.start_ramp_time": 0.5}),
    "safety.interpolation": ({}, {}, {"safety.interpolation": "cubic"}),
    "safety.join": ({}, {}, {"safety.join": "ensemble"}),
    "safety.crossfade_steps": ({}, {}, {"safety.crossfade_steps": 1}),
    "safety.ensemble_decay": ({}, {}, {"safety.ensemble_decay": 0.5}),
    "safety.inpaint_form": ({"safety.join": "inpaint"}, {}, {"safety.inpaint_form": "replace"}),
    "safety.inpaint_overlap": ({"safety.join": "inpaint"}, {}, {"safety.inpaint_overlap": "none"}),
    "telemetry.path": ({}, {}, {"telemetry.path": lambda t: str(t / "tel.json")}),
    "telemetry.live": ({}, {}, {"telemetry.live": False}),
    "telemetry.plot": ({}, {}, {"telemetry.plot": False}),
    "scene.task": ({}, {}, {"scene.task": "reach_multimodal"}),
    "scene.link_lengths": ({}, {}, {"scene.link_lengths": [0.1, 0.1]}),
    "scene.workspace": ({}, {}, {"scene.workspace": 0.5}),
    "scene.seed": ({}, {}, {"scene.seed": 3}),
    "scene.pulley_radius": ({"scene.task": "pusht"}, {}, {"scene.pulley_radius": 0.05},
                            None if HAVE_PUSHT else "needs gym-pusht"),
    "duration": ({}, {}, {"duration": 5.0}),
}

# Fields that by design change nothing edgedp.app builds; each names the test that shows its use.
ALLOWED = {
    "robot.dh": "forward kinematics for `edgedp calibrate handeye --robot`, not for a run: "
                "test_robot_dh_reaches_handeye_kinematics",
    "policy.state_key": "the checkpoints here have one state feature, so every valid value picks the same one; "
                        "a wrong one is refused by check and run (test_check_parity: bad state_key) and the chosen "
                        "key reaches RunParts (test_state_key_reaches_the_parts)",
    "source": "not a setting: where the loader read the file (excluded from the schema's dump)",
    # policy.remote: building needs a live policy server (Ray Serve); tests/test_serve.py starts one and shows
    # each key reaching the RemotePolicy / the check that uses it.
    **{f"policy.remote.{k}": f"needs a running server: tests/test_serve.py::{t}" for k, t in (
        ("url", "test_remote_settings_reach_the_policy"), ("timeout_ms", "test_remote_settings_reach_the_policy"),
        ("fallback", "test_remote_settings_reach_the_policy"), ("token", "test_wrong_token_is_refused_at_check"),
        ("token_file", "test_token_sources_reach_the_request"), ("token_env", "test_token_sources_reach_the_request"))},
}
# Settings whose whole job is to be shown: they reach the summary (check's title, the telemetry file) only.
SUMMARY_ONLY = {"robot.name": "the robot's label in `edgedp check` and in the telemetry summary"}
CAMERA_ONLY_WITH_REALSENSE = {"cameras[].kind", "cameras[].serial", "cameras[].file", "cameras[].exposure",
                              "cameras[].white_balance", "robot.bus.port"}


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        origin = typing.get_origin(ann)
        sub = None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub, path = ann, f"{prefix}{name}"
        elif origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            sub, path = args[0], f"{prefix}{name}[]"
        elif len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            sub, path = args[0], f"{prefix}{name}"
        if sub is not None:
            out += _leaves(sub, path + ".")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_leaf_field_has_a_row():
    leaves = set(_leaves(RunConfig))
    assert len(leaves) > 40  # the walk found the nested sections
    assert leaves - set(CHANGES) - set(ALLOWED) == set(), "settings nobody checks reach their code"
    assert (set(CHANGES) | set(ALLOWED)) - leaves == set(), "rows for fields the schema no longer has"
    assert not set(CHANGES) & set(ALLOWED)


def _set(data: dict, path: str, value) -> None:
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = copy.deepcopy(value)


def _config(tmp: Path, *changes: dict) -> RunConfig:
    data = copy.deepcopy(BASE)
    for change in changes:
        for path, value in change.items():
            _set(data, path, value(tmp) if callable(value) else value)
    return parse_config(data, base=tmp)


def _plain(obj, depth: int = 0):
    """A comparable picture of what was built: dataclasses, settings objects and arrays as plain values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, (Path, torch.device)):
        return str(obj)
    if depth < 2 and hasattr(obj, "__dict__"):
        return {"class": type(obj).__name__, **{k: _plain(v, depth + 1) for k, v in vars(obj).items()
                                                if not k.startswith("_") and not callable(v)}}
    return type(obj).__name__


def _fingerprint(tmp: Path, cfg: RunConfig) -> dict:
    before = {p for p in tmp.rglob("*")}
    built = assemble(cfg)
    parts, dev = built.parts, built.devices
    try:
        bus = _plain(dev.make_bus)
        if dev.emulator is not None:
            bus["spec"]["port"] = "<emulator link>"  # a fresh name per build, pointing at the emulator below
        cams = {}
        for key, cam in parts.cameras.items():
            seen = _plain(cam)
            if getattr(getattr(cam, "settings", None), "serial", None) is not None and plan_kind(cfg, cam) == "virtual":
                seen["settings"]["serial"] = "<virtual device>"
            cams[key] = seen
        policy = parts.policy
        weights = float(sum(p.detach().double().sum() for p in policy.parameters()))
        return {
            "parts": {k: _plain(getattr(parts, k)) for k in (
                "steps", "action_period", "n_action_steps", "state_key", "image_shapes", "servo", "servo_in_process",
                "max_observation_age", "extra_latency", "sync", "camera_delay", "command_delay", "action_lead",
                "inpaint_overlap", "config_summary")},
            "bus": bus,
            "emulator": None if dev.emulator is None else {"servos": dev.emulator.servos, "baud": dev.emulator.baud,
                                                           "initial": dev.emulator.initial},
            "cameras": cams,
            "scene": _plain(dev.scene),
            "policy": {"weights": weights, "device": str(policy.device), "noise": _noise(policy),
                       "scheduler": _plain(getattr(policy, "scheduler_spec", None)),
                       "sampler_options": _plain(getattr(policy, "sampler_options", None))},
            "sampler": {k: _plain(getattr(parts.sampler, k, None)) for k in ("backend", "precision", "steps", "device")},
            "settings": _plain(built.settings),
            "files": sorted(str(p.relative_to(tmp)) for p in set(tmp.rglob("*")) - before),
        }
    finally:
        for close in reversed(dev.closers):
            close()


def plan_kind(cfg: RunConfig, cam) -> str:
    name = getattr(getattr(cam, "settings", None), "name", None)
    return next((c.kind for c in cfg.cameras if c.name == name), "")


def _noise(policy) -> list:
    """The first draws of the policy's own noise generator (what policy.seed sets besides preset weights)."""
    rng = getattr(policy, "_rng", None)
    gen = rng() if callable(rng) else None
    if not isinstance(gen, torch.Generator):
        return []
    state = gen.get_state()
    try:
        return torch.randn(3, generator=gen).tolist()
    finally:
        gen.set_state(state)


_BASE_CACHE: dict[str, dict] = {}


@pytest.mark.parametrize("leaf", sorted(CHANGES))
def test_setting_changes_what_is_built(tmp_path, leaf, one_torch_thread):
    row = CHANGES[leaf]
    shared, a, b = row[:3]
    skip = row[3] if len(row) > 3 else None
    if skip:
        pytest.skip(skip)
    if leaf in CAMERA_ONLY_WITH_REALSENSE and not HAVE_REALSENSE:
        pytest.skip("needs pyrealsense2")
    key = json.dumps([shared, a], sort_keys=True, default=lambda f: f.__name__)
    if key not in _BASE_CACHE or a:
        _BASE_CACHE[key] = _fingerprint(tmp_path, _config(tmp_path, shared, a))
    fa = _BASE_CACHE[key]
    fb = _fingerprint(tmp_path, _config(tmp_path, shared, b))
    fa = {k: v for k, v in fa.items() if k != "files" or a}  # files only count when A wrote into tmp_path too
    fb = {k: v for k, v in fb.items() if k in fa}
    if leaf not in SUMMARY_ONLY:  # the summary only records settings; what must differ is what uses them
        for f in (fa, fb):
            f["parts"] = {k: v for k, v in f["parts"].items() if k != "config_summary"}
    assert json.dumps(fa, sort_keys=True, default=str) != json.dumps(fb, sort_keys=True, default=str), \
        f"{leaf}: two values built the same parts; nothing reads this setting"


def test_fingerprint_is_deterministic(tmp_path, one_torch_thread):
    """Two builds of the same config are equal, so a difference above comes from the setting alone."""
    cfg = lambda: _config(tmp_path, {})  # noqa: E731
    first, second = _fingerprint(tmp_path, cfg()), _fingerprint(tmp_path, cfg())
    first.pop("files"), second.pop("files")
    assert json.dumps(first, sort_keys=True, default=str) == json.dumps(second, sort_keys=True, default=str)


# ---- where the allow-listed fields are used --------------------------------------------------------------
def test_robot_dh_reaches_handeye_kinematics(tmp_path):
    import argparse

    from edgedp.commands.calibrate import _fk_from_args

    poses = []
    for a in (0.1, 0.2):
        data = copy.deepcopy(BASE)
        data["robot"]["dh"] = [[a, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]]
        path = tmp_path / f"robot_{a}.yaml"
        path.write_text(yaml.safe_dump(data))
        fk, _ = _fk_from_args(argparse.Namespace(urdf=None, tip=None, robot=str(path)))
        poses.append(np.asarray(fk(np.zeros(2))))
    assert not np.allclose(poses[0], poses[1])


def test_state_key_reaches_the_parts(tmp_path, one_torch_thread):
    built = assemble(_config(tmp_path, {"policy.state_key": "observation.state"}))
    try:
        assert built.parts.state_key == "observation.state"
    finally:
        for close in reversed(built.devices.closers):
            close()
