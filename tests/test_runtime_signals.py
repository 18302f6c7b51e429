"""`edgedp run` as a user and as systemd stop it: Ctrl-C or SIGTERM to the whole process group (a terminal
sends Ctrl-C to the foreground group; systemd's default KillMode sends SIGTERM to every process of the
service), in both servo modes. The servo loop must still run its safe stop: decelerate, then torque off
(safety.on_stop), confirmed by the emulated servos themselves; no traceback, no process left behind.
"""
from __future__ import annotations

from example_configs import load_example
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(d.name))
    return out


def _running(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return "?"


def _config(tmp_path, servo_in_process: bool, on_stop: str = "torque_off") -> Path:
    data = load_example()
    data["rates"]["servo_hz"] = 250
    data["rates"]["servo_in_process"] = servo_in_process
    data["safety"]["start_ramp_time"] = 0.5
    data["safety"]["on_stop"] = on_stop
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _launch(cfg: Path, tel: Path) -> subprocess.Popen:
    """`edgedp run` as the leader of its own process group (like a service or a terminal job)."""
    return subprocess.Popen([sys.executable, "-m", "edgedp.cli", "run", str(cfg), "--no-live", "--telemetry", str(tel)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, marker: str, limit: float = 120.0) -> str:
    seen = ""
    deadline = time.monotonic() + limit  # a guard against hanging, not a timing assertion
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"never saw {marker!r}; output so far:\n{seen}\n{proc.stderr.read() if proc.poll() is not None else ''}")


def _signal_group_and_finish(proc: subprocess.Popen, sig: int) -> tuple[str, str, set[int]]:
    kids = _children(proc.pid)
    os.killpg(proc.pid, sig)  # the whole group: the runtime, its servo process and its emulator process
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out, err, kids


def _assert_gone(kids: set[int]) -> None:
    # multiprocessing's resource tracker notices its parent's exit on its own a moment later: a grace period.
    deadline = time.monotonic() + 5.0
    alive = set(kids)
    while alive and time.monotonic() < deadline:
        alive = {k for k in alive if _running(k)}
        time.sleep(0.1)
    assert not alive, [_cmdline(k) for k in alive]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_sigterm_to_the_process_group_runs_the_safe_stop(tmp_path, mode):
    tel = tmp_path / "tel.json"
    proc = _launch(_config(tmp_path, servo_in_process=mode == "process"), tel)
    seen = _wait_for(proc, "planner started")
    # Let it execute a chunk or two: wait until the servo loop has published joint states for a while.
    time.sleep(1.5)
    out, err, kids = _signal_group_and_finish(proc, signal.SIGTERM)
    assert proc.returncode == 0, seen + out + err
    assert "Traceback" not in out + err, err
    report = json.loads(tel.read_text())
    assert report["stopped_by"] == "sigterm" and report["mode"] == mode
    assert report["servo_end"] == "stopped"  # the loop left by the stop request, not killed
    stop = report["servo_stop"]
    # The safe stop ran in the servo loop: it braked to zero speed, switched torque off and closed the port ...
    assert stop["decelerated"] is True and stop["speed_after_rad_s"] == pytest.approx(0.0, abs=1e-6)
    assert stop["torque_off"] is True and stop["closed"] is True
    # ... and the servos themselves (the emulator, which also got the signal) confirm torque is off.
    assert report["sim_servos_after_stop"] is not None
    assert all(not s["torque"] for s in report["sim_servos_after_stop"].values()), report["sim_servos_after_stop"]
    assert report["alerts"] == [] and report["exit_code"] == 0
    _assert_gone(kids)


def test_ctrl_c_to_the_group_while_devices_start_stops_safely_in_one_line(tmp_path):
    """Ctrl-C from a terminal while the emulator, camera and servo process are starting: no traceback from
    any process, the stop is recorded, torque is not left on."""
    tel = tmp_path / "tel.json"
    proc = _launch(_config(tmp_path, servo_in_process=True), tel)
    _wait_for(proc, "starting devices")
    out, err, kids = _signal_group_and_finish(proc, signal.SIGINT)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err, err
    report = json.loads(tel.read_text())
    assert report["stopped_by"] == "ctrl-c"
    assert report["alerts"] == []
    if report["sim_servos_after_stop"]:  # the emulator was up: whatever state the stop found, torque is off
        assert all(not s["torque"] for s in report["sim_servos_after_stop"].values())
    _assert_gone(kids)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_while_loading_is_one_line(tmp_path, sig, code, word):
    """Before the runtime starts (config, checkpoint, compile) nothing is open: one line, 130 / 143."""
    tel = tmp_path / "tel.json"
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys, edgedp.cli as c, edgedp.app as a\n"
                             "def slow(*args, **kw):\n"
                             "    print('loading', flush=True)\n"
                             "    import time; time.sleep(60)\n"
                             "a.assemble = a.build = slow  # loading that takes a while\n"
                             "sys.exit(c.main(sys.argv[1:]))",
                             "run", str(_config(tmp_path, True)), "--no-live", "--telemetry", str(tel)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(proc, "loading")
    out, err, _ = _signal_group_and_finish(proc, sig)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"edgedp run: {word} ({'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'})"]
    assert not tel.exists()


def test_ctrl_c_in_process_stops_the_run(tmp_path):
    """Ctrl-C (SIGINT to this process) while Runtime.run() owns the main thread: a clean stop, exit 0,
    on_stop: hold keeps torque on at the braked pose."""
    import threading

    from edgedp.app import build
    from edgedp.config import parse_config
    from edgedp.runtime.lifecycle import Runtime

    data = load_example()
    data["rates"]["servo_hz"] = 250
    data["rates"]["servo_in_process"] = False
    data["safety"]["start_ramp_time"] = 0.5
    data["safety"]["on_stop"] = "hold"
    cfg = parse_config(data, base=ROOT / "examples")
    rt = Runtime(build(cfg), 60.0, tmp_path / "tel.json", plot=False, live=False, console=None)
    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(4.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = rt.run()
    finally:
        timer.cancel()
    assert code == 0
    report = json.loads((tmp_path / "tel.json").read_text())
    assert report["stopped_by"] == "ctrl-c"
    assert report["servo_stop"]["decelerated"] is True and report["servo_stop"]["torque_off"] is False
    assert all(s["torque"] for s in report["sim_servos_after_stop"].values())
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
