"""The whole loop against the real parts: emulated XM430s on a pty through dynamixel-sdk, a virtual RealSense
rendering the simulated arm, the `small` preset policy, the planner and the servo loop (thread and process).
"""
from __future__ import annotations

from example_configs import load_example
import json
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgedp.app import build
from edgedp.cli import main
from edgedp.config import parse_config
from edgedp.runtime.lifecycle import EXIT_UNSAFE_STOP, EXIT_WATCHDOG, Runtime

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim.yaml"
SCHEMA_KEYS = ("servo_rate_hz", "servo_period_error_us", "inference_ms", "overruns", "bus_errors", "safety_clamps",
               "chunks", "join_jump_max", "stale_observations", "stages_ms", "e2e_latency_ms", "joins")


def _cfg(**changes):
    data = load_example()
    data["rates"]["servo_hz"] = 250  # kinder to a shared 2-core machine; the logic is rate-independent
    data["safety"]["start_ramp_time"] = 0.5
    data["telemetry"]["live"] = False
    for path, value in changes.items():
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return parse_config(data, base=EXAMPLE.parent)


ENOUGH = "enough chunks"  # the stop reason tests give once they have what they count


def _threads():
    return {t for t in threading.enumerate() if t.is_alive()}


def _run(cfg, duration, tmp_path, during=None, chunks=None):
    """Run the sim; `during(parts)` is called once the first chunk was published (the servo loop holds the
    arm and follows a plan), whatever the start-up took. `chunks`: stop once that many chunks were published
    (then `duration` is only a guard), so what a test counts does not depend on how fast this machine is."""
    parts = build(cfg)
    before = _threads()
    rt = Runtime(parts, duration, tmp_path / "tel.json", plot=True, live=False, console=None)
    helper = None
    if chunks is not None:
        def stop_when_enough():
            deadline = time.monotonic() + duration
            while len(rt.tel.chunk_log) < chunks and time.monotonic() < deadline:
                time.sleep(0.02)
            rt.request_stop(ENOUGH)

        helper = threading.Thread(target=stop_when_enough, daemon=True)
        helper.start()
    elif during is not None:
        def when_running():
            deadline = time.monotonic() + 120  # a guard against hanging, not a timing assertion
            while not rt.tel.chunk_log and time.monotonic() < deadline:
                time.sleep(0.02)
            during(parts)

        helper = threading.Thread(target=when_running, daemon=True)
        helper.start()
    code = rt.run()
    if helper is not None:
        helper.join(5)
    for t in _threads() - before:
        if t.name == "planner":  # an inference cannot be interrupted: it may finish after the arm is held
            t.join(15)
    left = {t for t in _threads() - before if t.is_alive()}
    tel = json.loads((tmp_path / "tel.json").read_text())
    return code, rt, parts, tel, left


def test_sim_loop_thread_mode_executes_chunks_and_follows_commands(tmp_path):
    code, rt, parts, tel, left = _run(_cfg(**{"rates.servo_in_process": False}), 120.0, tmp_path, chunks=4)
    assert code == 0, tel["notes"]
    assert tel["stopped_by"] == ENOUGH
    for key in SCHEMA_KEYS:
        assert key in tel
    assert tel["chunks"] >= 3 and tel["chunks_executed"] >= 3
    assert tel["servo_ticks"] > 50  # counts only; speed is the benchmarks' business
    assert tel["inference_ms"]["p50"] > 0 and tel["servo_period_error_us"]["p99"] is not None
    assert len(tel["joins"]) == tel["chunks_executed"] - 1
    # Every stage of every chunk was timed by the policy itself (predict_chunk's timing), once per chunk.
    for stage in ("observation", "normalize", "encode", "sample", "unnormalize", "denoise_step", "inference"):
        assert tel["stages_ms"][stage]["n"] == tel["chunks"], stage
    assert tel["denoise_step_source"] == "sampler time / K"
    assert tel["stages_ms"]["denoise_step"]["p50"] == pytest.approx(tel["stages_ms"]["sample"]["p50"] / 10, rel=1e-9)
    assert not parts.policy.denoiser._forward_hooks and not parts.policy.denoiser._forward_pre_hooks  # no hooks
    assert (tmp_path / "tel.png").stat().st_size > 10_000
    # The servos followed the commands: measured positions track the commanded ones (the emulated motor lags
    # by its own dynamics, so compare with a lag allowance), and the final pose is the last command.
    tl = rt.tel.servo["timeline"]
    t, cmd, meas = tl["t"], tl["cmd"], tl["meas"]
    lagged = np.stack([np.interp(t - 0.1, t, cmd[:, j]) for j in range(cmd.shape[1])], axis=1)
    late = t > t[0] + 0.2
    assert np.median(np.abs(meas[late] - lagged[late])) < 0.15
    emu = parts.emulator.final  # the emulated servos' state when the run ended
    final = np.array([emu[j]["position"] for j in (1, 2)])
    assert np.allclose(final, cmd[-1], atol=0.2)
    # The start: the first command is the pose the arm was in (mid-range = 0 here), reached without a jump.
    assert np.allclose(cmd[0], 0.0, atol=0.01)
    vmax = 3.0
    steps = np.abs(np.diff(cmd, axis=0)).max(axis=1)
    assert np.all(steps <= vmax * np.diff(t) * 1.01 + 1e-6)
    # Safety: commands never left the joint limits.
    assert np.all(cmd[:, 0] >= -1.6) and np.all(cmd[:, 0] <= 1.6)
    assert np.all(cmd[:, 1] >= -2.2) and np.all(cmd[:, 1] <= 2.2)
    # Hold on stop: torque stays on (safety.on_stop: hold), and nothing is left running.
    assert all(emu[j]["torque"] for j in (1, 2))
    assert tel["sim_servos_after_stop"] == {str(j): {"torque": True, "position_rad": emu[j]["position"]} for j in (1, 2)}
    assert not left, [t.name for t in left]
    # The safe stop ran and braked to rest: its record says so, and the commanded speed it ended at is zero.
    stop = tel["servo_stop"]
    assert stop["decelerated"] is True and stop["closed"] is True and stop["speed_after_rad_s"] == pytest.approx(0, abs=1e-6)
    assert set(tel["stop_ms"]) == {"held_ms", "servo_ms", "planner_ms", "cameras_ms", "devices_ms", "total_ms"}
    assert 0 < tel["stop_ms"]["held_ms"] <= tel["stop_ms"]["servo_ms"] <= tel["stop_ms"]["total_ms"]  # order, not speed
    assert tel["alerts"] == [] and tel["mode"] == "thread" and "GIL" in tel["mode_reason"]


def test_watchdog_on_a_mute_bus_says_loudly_that_torque_off_was_not_confirmed(tmp_path, capsys):
    """Every status packet lost: the watchdog names the servos and the fault; the torque-off request still
    reaches the servos (they hear it) but none can confirm it, so the run says so on stderr and exits 4."""
    def break_bus(parts):
        parts.emulator.faults.set(drop_rate=1.0)  # every status packet lost: each tick's read fails

    cfg = _cfg(**{"safety.on_stop": "torque_off", "safety.watchdog_failed_ticks": 10})
    code, rt, parts, tel, left = _run(cfg, 120.0, tmp_path, during=break_bus)  # 120 s: a guard
    assert code == EXIT_UNSAFE_STOP  # an unconfirmed torque off outranks the watchdog's own exit code 3
    assert tel["exit_code"] == EXIT_UNSAFE_STOP
    assert tel["stopped_by"] == "watchdog" and tel["servo_end"] == "watchdog"
    assert tel["bus_errors"] >= 10
    assert tel["servo_error"].startswith("10 consecutive failed bus ticks: servo 1 (shoulder), servo 2 (elbow): "
                                         "no reply (timeout)")
    assert "torque off not confirmed by servos 1, 2" in tel["servo_stop"]["torque_off_error"]
    assert tel["servo_stop"]["decelerated"] is True  # goal writes need no reply: the braking still reached the bus
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("edgedp run: servo loop stopped by its watchdog: 10 consecutive failed bus ticks: "
                               "servo 1 (shoulder), servo 2 (elbow): no reply (timeout)") for line in err), err
    assert any(line.startswith("edgedp run: SAFE STOP INCOMPLETE: torque off failed: servo 1 (shoulder), "
                               "servo 2 (elbow): torque off not confirmed") for line in err), err
    assert tel["alerts"] == [line[len("edgedp run: "):] for line in err if line.startswith("edgedp run: ")]
    # The servos did switch off (they heard the sync write; only their replies were lost).
    assert not parts.emulator.final[1]["torque"] and not parts.emulator.final[2]["torque"]
    assert not left


def test_watchdog_names_the_overloaded_servo_and_torque_off_succeeds(tmp_path, capsys):
    """An overload on the elbow: every read raises its hardware alert; the watchdog names servo 2 (elbow) and
    the bit by name; torque off is confirmed, so the exit code is the watchdog's (3) and no safe-stop alert."""
    def overload(parts):
        parts.emulator.faults.set(hardware_error={2: 0x20})

    cfg = _cfg(**{"safety.on_stop": "torque_off", "safety.watchdog_failed_ticks": 10})
    code, rt, parts, tel, left = _run(cfg, 120.0, tmp_path, during=overload)  # 120 s: a guard
    assert code == EXIT_WATCHDOG, tel["alerts"]
    assert tel["servo_error"] == ("10 consecutive failed bus ticks: servo 2 (elbow): hardware error overload "
                                  "(Hardware Error Status 0x20; reboot the servo to clear)")
    assert tel["servo_stop"]["torque_off"] is True and "torque_off_error" not in tel["servo_stop"]
    err = capsys.readouterr().err
    assert "servo 2 (elbow): hardware error overload" in err and "SAFE STOP INCOMPLETE" not in err
    assert not parts.emulator.final[1]["torque"] and not parts.emulator.final[2]["torque"]
    assert not left


@pytest.mark.parametrize("join", ["ensemble"])
def test_sim_loop_process_mode(tmp_path, join):
    cfg = _cfg(**{"rates.servo_in_process": True, "safety.join": join, "safety.interpolation": "linear"})
    code, rt, parts, tel, left = _run(cfg, 120.0, tmp_path, chunks=3)
    assert code == 0, (tel["notes"], tel.get("servo_error"))
    assert tel["mode"] == "process" and "planner cannot delay" in tel["mode_reason"]
    assert tel["chunks_executed"] >= 2 and tel["servo_ticks"] > 50
    assert not multiprocessing.active_children()  # servo and emulator processes are gone
    assert not left


def test_cli_run_rejects_bad_config_before_opening_anything(tmp_path, capsys):
    data = load_example()
    data["cameras"][0]["policy_key"] = "observation.images.wrist"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    before = _threads()
    assert main(["run", str(bad), "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cameras[0].policy_key" in err[0]
    assert main(["run", str(EXAMPLE), "--duration", "-1"]) == 2
    assert "--duration" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    data = load_example()
    data["robot"]["bus"]["port"] = str(tmp_path / "ttyUSB9")
    data["cameras"] = []
    data["policy"]["checkpoint"] = "preset:small"
    absent = tmp_path / "absent.yaml"
    absent.write_text(yaml.safe_dump(data))
    assert main(["run", str(absent), "--duration", "1"]) == 2
    assert "robot.bus.port" in capsys.readouterr().err
    assert not (_threads() - before)


def test_late_chunks_make_the_arm_hold_and_decelerate(tmp_path):
    """Chunks of 2 actions (0.1 s) arriving 0.4 s late: the servo loop runs out of plan, decelerates, holds."""
    cfg = _cfg(**{"policy.n_action_steps": 2, "policy.extra_latency_ms": 400.0})
    code, rt, parts, tel, left = _run(cfg, 120.0, tmp_path, chunks=3)
    assert code == 0
    assert tel["uncovered_ticks"] > 0
    assert tel["chunks_executed"] >= 2
    tl = rt.tel.servo["timeline"]
    t, cmd = tl["t"], tl["cmd"]
    v = np.abs(np.diff(cmd, axis=0)) / np.diff(t)[:, None]
    assert np.all(v <= 3.0 * 1.01)  # never faster than max_velocity, also while holding and resuming
    assert not left


def test_unplugged_camera_stops_the_run_naming_the_camera(tmp_path, capsys):
    """The virtual RealSense is unplugged for good mid-run: frames stop, the driver's reconnects fail, and the
    runtime stops (instead of holding forever) with one line naming the camera and exit 5; the arm is held."""
    from edgedp.runtime.lifecycle import EXIT_CAMERA_LOST
    from firmware_bridge.realsense.virtual import registered_devices

    def unplug(parts):
        devices = registered_devices()
        assert devices, "the sim camera should be a virtual RealSense here"
        for dev in devices:
            dev.unplug()

    code, rt, parts, tel, left = _run(_cfg(), 120.0, tmp_path, during=unplug)
    assert code == EXIT_CAMERA_LOST and tel["exit_code"] == EXIT_CAMERA_LOST
    assert tel["stopped_by"] == "camera lost"
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgedp run: ")]
    assert len(err) == 1, err
    assert err[0].startswith("edgedp run: camera 'top' (feeding observation.image) lost: no new frame for "), err
    assert "the arm was held and the run stopped" in err[0]
    assert tel["servo_stop"]["decelerated"] is True  # the safe stop ran as for any other stop
    assert all(s["torque"] for s in tel["sim_servos_after_stop"].values())  # on_stop: hold
    assert tel["cameras"]["top"]["reconnect_attempts"] >= 1  # the driver tried before the runtime gave up
    assert not left
