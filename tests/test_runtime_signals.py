"""`edgedp run` as a user runs it: SIGTERM and Ctrl-C stop it cleanly, with the servo process gone."""
from __future__ import annotations

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


@pytest.mark.parametrize("sig,name", [(signal.SIGTERM, "sigterm"), (signal.SIGINT, "ctrl-c")])
def test_signal_stops_the_run_cleanly(tmp_path, sig, name):
    data = yaml.safe_load((ROOT / "examples" / "sim.yaml").read_text())
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
    for k in kids:  # the servo process (and anything else it started) is gone
        assert not Path(f"/proc/{k}").exists() or "zombie" in Path(f"/proc/{k}/status").read_text()
