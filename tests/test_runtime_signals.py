"""`edgedp run` as a user runs it: SIGTERM and Ctrl-C stop it cleanly, with the servo process gone."""
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


@pytest.mark.parametrize("sig,name", [(signal.SIGTERM, "sigterm")])
def test_signal_stops_the_run_cleanly(tmp_path, sig, name):
    data = load_example()
    data["rates"]["servo_hz"] = 250
    data["rates"]["servo_in_process"] = sig == signal.SIGTERM  # one of each mode
    data["safety"]["start_ramp_time"] = 0.5
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(yaml.safe_dump(data))
    tel = tmp_path / "tel.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgedp.cli", "run", str(cfg), "--no-live", "--telemetry", str(tel)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if "planner started" in line:
                break
        assert "planner started" in seen, seen
        time.sleep(1.5)
        kids = _children(proc.pid)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen + rest
    report = json.loads(tel.read_text())
    assert report["stopped_by"] == name
    assert report["chunks_executed"] >= 1
    assert tel.with_suffix(".png").exists()
    # The servo and emulator processes are gone. multiprocessing's resource tracker notices its parent's exit
    # on its own a moment later, so give stragglers a short grace period before naming them.
    deadline = time.monotonic() + 5.0
    alive = set(kids)
    while alive and time.monotonic() < deadline:
        alive = {k for k in alive if _running(k)}
        time.sleep(0.1)
    assert not alive, [_cmdline(k) for k in alive]


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


def test_ctrl_c_in_process_stops_the_run(tmp_path):
    """Ctrl-C (SIGINT to this process) while Runtime.run() owns the main thread: a clean stop, exit 0."""
    import threading

    from edgedp.app import build
    from edgedp.config import parse_config
    from edgedp.runtime.lifecycle import Runtime

    data = load_example()
    data["rates"]["servo_hz"] = 250
    data["safety"]["start_ramp_time"] = 0.5
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
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
