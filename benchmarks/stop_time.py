"""How long `edgedp run` takes to stop, as a service manager sees it: SIGTERM to the process group of a
running sim run (examples/sim.yaml: emulated servos, virtual RealSense, trained policy), per servo mode.

    held      stop request -> the servo loop's safe stop is complete: the arm braked to rest, on_stop applied,
              port closed (telemetry stop_ms.held_ms; the servo loop stamps it with the shared monotonic clock)
    teardown  stop request -> every part stopped: servo loop joined, planner, cameras, emulator (stop_ms.total_ms)
    exit      SIGTERM sent -> process exited: teardown plus the summary table, the telemetry JSON and the PNG
              timeline (measured here, from outside)

Median (and max) of --repeats runs per mode, side by side in one invocation.

    python benchmarks/stop_time.py --repeats 3 --out benchmarks/results/stop_time.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from edgedp.host_info import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def one_run(mode: str, settle: float, plot: bool, tmp: Path) -> dict:
    data = yaml.safe_load((ROOT / "examples" / "sim.yaml").read_text())
    data["policy"]["checkpoint"] = str((ROOT / "examples" / data["policy"]["checkpoint"]).resolve())
    data["rates"]["servo_in_process"] = mode == "process"
    data["telemetry"]["plot"] = plot
    cfg = tmp / f"sim_{mode}.yaml"
    cfg.write_text(yaml.safe_dump(data))
    tel = tmp / f"tel_{mode}.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgedp.cli", "run", str(cfg), "--no-live", "--telemetry", str(tel)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if "planner started" in line:
                break
        time.sleep(settle)  # let it run (chunks executing, the arm moving)
        t_sig = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
        exit_ms = (time.monotonic() - t_sig) * 1e3
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    d = json.loads(tel.read_text())
    return {"held_ms": d["stop_ms"].get("held_ms"), "teardown_ms": d["stop_ms"].get("total_ms"), "exit_ms": exit_ms,
            "stages_ms": d["stop_ms"], "returncode": proc.returncode, "stopped_by": d["stopped_by"],
            "decelerated": d["servo_stop"].get("decelerated"), "speed_at_stop_rad_s": d["servo_stop"].get("speed_at_stop_rad_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to run before SIGTERM")
    ap.add_argument("--no-plot", action="store_true", help="telemetry.plot: false (exit without the PNG)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("thread", "process"):
            runs = [one_run(mode, args.settle, not args.no_plot, Path(tmp)) for _ in range(args.repeats)]
            rows[mode] = {"runs": runs}
            for k in ("held_ms", "teardown_ms", "exit_ms"):
                vals = [r[k] for r in runs if r[k] is not None]
                rows[mode][k] = {"median": statistics.median(vals) if vals else None, "max": max(vals) if vals else None}
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); load average {os.getloadavg()[0]:.1f}; "
          f"{args.repeats} runs per mode; plot {'off' if args.no_plot else 'on'}")
    print(f"{'mode':<8} {'held ms (median / max)':>24} {'teardown ms':>20} {'exit ms':>20}")
    for mode, r in rows.items():
        cells = [f"{r[k]['median']:.0f} / {r[k]['max']:.0f}" if r[k]["median"] is not None else "-"
                 for k in ("held_ms", "teardown_ms", "exit_ms")]
        print(f"{mode:<8} {cells[0]:>24} {cells[1]:>20} {cells[2]:>20}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu": cpu_model(), "load_average_1min": os.getloadavg()[0],
                                        "repeats": args.repeats, "plot": not args.no_plot, "modes": rows}, indent=2))


if __name__ == "__main__":
    main()
