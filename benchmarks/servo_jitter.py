"""Servo period error (wake-up time minus absolute deadline) at a fixed rate, with and without the planner
running on the same machine, for the servo loop as a thread and as its own process.

The bus is the real driver (dynamixel-sdk) against the Protocol 2.0 emulator, which runs in a third process
(on a robot the servos are hardware, not a thread competing for our GIL). "with planner" runs the small
preset's full inference (encode + K denoising steps) back to back in this process and publishes each chunk,
which is what the planner thread does in `edgedp run`.

    python benchmarks/servo_jitter.py --hz 500 --seconds 10 --out benchmarks/results/servo_jitter.json
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataclasses  # noqa: E402

from edgedp.app import BusTuning, apply_joint_calibration, bus_errors, robot_devices, servo_params  # noqa: E402
from edgedp.config import parse_config  # noqa: E402
from edgedp.runtime.control import Control  # noqa: E402
from edgedp.runtime.ring import ChunkRing  # noqa: E402
from edgedp.runtime.servo_loop import ServoProcess, ServoThread  # noqa: E402
from edgedp.runtime.servo_loop import HIST_BIN_US  # noqa: E402
from edgedp.runtime.telemetry import hist_percentiles  # noqa: E402

# The arm of examples/sim.yaml on the emulator at 4 Mbps; devices and servo parameters come from the assembly
# point (edgedp/app.py) exactly as `edgedp run` builds them.
ROBOT = {
    "robot": {"bus": {"port": "emulator", "baud": 4_000_000}, "joints": [
        {"name": "shoulder", "id": 1, "model": "xm430-w350", "min": -1.6, "max": 1.6, "max_velocity": 3.0,
         "max_acceleration": 30.0},
        {"name": "elbow", "id": 2, "model": "xm430-w350", "min": -2.2, "max": 2.2, "max_velocity": 3.0,
         "max_acceleration": 30.0}]},
    "policy": {"checkpoint": "preset:small"},
    "safety": {"start_ramp_time": 0.5},
}


def planner_load(stop: threading.Event, ring: ChunkRing, stats: dict, policy) -> None:
    rng = np.random.default_rng(0)
    obs = {"observation.image": rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8),
           "observation.state": np.zeros((2, 2), np.float32)}
    n = 0
    t_total = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        chunk = policy.predict_chunk(obs)[1:9].astype(np.float64) * 0.3
        t_total += time.perf_counter() - t0
        ring.publish(chunk, t0=time.monotonic(), dt=0.1)
        n += 1
    stats["inferences"] = n
    stats["inference_ms_mean"] = 1e3 * t_total / max(n, 1)


def measure(mode: str, with_planner: bool, hz: float, seconds: float, factory, spin_us: float,
            steps: int) -> dict:
    data = {**ROBOT, "rates": {"servo_hz": hz, "servo_in_process": mode == "process"}}
    cfg = parse_config(data)
    params = dataclasses.replace(servo_params(cfg, apply_joint_calibration(cfg)[0]),
                                 spin_us=spin_us if mode == "process" else 0.0)
    chunks = ChunkRing.create(8, 2, slots=4)
    states = ChunkRing.create(256, 3, slots=3, timed=False)
    control = Control.create()
    runner = (ServoProcess if mode == "process" else ServoThread)(factory, chunks, states, control, params,
                                                                   bus_errors())
    stop = threading.Event()
    load_stats: dict = {}
    load = None
    policy = None
    if with_planner:
        import torch

        from edgedp.policy_loading import load_policy

        torch.set_num_threads(1)
        policy = load_policy("preset:small", "cpu", steps, 0)  # loaded before the clock starts
        policy.predict_chunk({"observation.image": np.zeros((2, 96, 96, 3), np.uint8),
                              "observation.state": np.zeros((2, 2), np.float32)})
    old_switch = sys.getswitchinterval()
    if mode == "thread":
        sys.setswitchinterval(0.0005)  # what the runtime does in thread mode
    runner.start()
    while control.phase == "starting" and runner.alive():
        time.sleep(0.01)
    if with_planner:
        load = threading.Thread(target=planner_load, args=(stop, chunks, load_stats, policy), daemon=True)
        load.start()
    time.sleep(seconds)
    stop.set()
    if load is not None:
        load.join(10)
    control.request_stop()
    report = runner.join(5.0) or {}
    runner.kill()
    sys.setswitchinterval(old_switch)
    chunks.close()
    states.close()
    control.close()
    pe = hist_percentiles(np.asarray(report.get("period_error_hist", np.zeros(1))),
                          report.get("period_error_max_us", 0.0))
    we = hist_percentiles(np.asarray(report.get("wake_error_hist", np.zeros(1))), report.get("wake_error_max_us", 0.0))
    tw = hist_percentiles(np.asarray(report.get("tick_work_hist", np.zeros(1))), report.get("tick_work_max_us", 0.0))
    hists = {}
    for name in ("period_error", "wake_error", "tick_work"):
        h = np.asarray(report.get(f"{name}_hist", np.zeros(1)))
        nz = np.nonzero(h)[0]
        hists[name] = {str(int(i * HIST_BIN_US)): int(h[i]) for i in nz}
    return {"mode": mode, "planner": with_planner, "hz": hz, "ticks": report.get("ticks"), "histograms_5us": hists,
            "period_error_us": pe, "wake_error_us": we, "tick_work_us": tw, "overruns": report.get("overruns"), "skipped": report.get("skipped_ticks"),
            "bus_errors": report.get("bus_errors"), "chunks_executed": report.get("chunks_executed"),
            "spin_us": params.spin_us, "scheduling": report.get("scheduling"), **load_stats, "error": report.get("error")}


def plot(rows: list[dict], hz: float, path: Path) -> None:
    """Survival curves (fraction of ticks later than x) of the wake-up and period errors, per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name, title in ((axes[0], "wake_error", "wake-up error (ticks that slept)"),
                            (axes[1], "period_error", "period error (all ticks)")):
        for r in rows:
            bins = r["histograms_5us"][name]
            if not bins:
                continue
            x = np.array(sorted(int(k) for k in bins), dtype=float)
            c = np.array([bins[str(int(k))] for k in x], dtype=float)
            surv = 1.0 - np.cumsum(c) / c.sum()
            ax.step(x + HIST_BIN_US, np.maximum(surv, 1e-6), where="post",
                    label=f"{r['mode']}, planner {'on' if r['planner'] else 'off'}")
        ax.axvline(200, color="0.6", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(left=1)
        ax.set_yscale("log")
        ax.set_xlabel("µs after the deadline")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of ticks later than x")
    fig.suptitle(f"servo loop at {hz:g} Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hz", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--spin-us", type=float, default=150.0, help="busy-wait before each deadline (process mode)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="thread,process")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/servo_jitter.json"))
    args = ap.parse_args()
    cfg = parse_config(ROBOT)
    # torque stays on between the measurements (one emulator for all of them)
    dev = robot_devices(cfg, apply_joint_calibration(cfg)[0], BusTuning(torque_off_on_close=False))
    for start in dev.starters:
        start()
    rows = []
    try:
        for mode in args.modes.split(","):
            for planner in (False, True):
                r = measure(mode, planner, args.hz, args.seconds, dev.make_bus, args.spin_us, args.steps)
                rows.append(r)
                pe = r["period_error_us"]
                print(f"{mode:8s} planner={'on ' if planner else 'off'} ticks={r['ticks']} "
                      f"p50={pe['p50']} p99={pe['p99']} max={pe['max']:.0f} us overruns={r['overruns']} "
                      f"bus_errors={r['bus_errors']}", flush=True)
    finally:
        for close in reversed(dev.closers):
            close()
    import os
    import platform

    print()
    print("period error = wake time - deadline, every tick; wake = only ticks that slept (the previous tick's bus")
    print("I/O finished in time); work = bus read + compute + bus write per tick. All in µs.")
    print(f"{'mode':8s} {'planner':8s} {'ticks':>7s} {'err p50':>8s} {'err p99':>8s} {'err max':>8s} "
          f"{'wake p99':>9s} {'work p50':>9s} {'work p99':>9s} {'overruns':>8s}")
    for r in rows:
        pe, we, tw = r["period_error_us"], r["wake_error_us"], r["tick_work_us"]
        print(f"{r['mode']:8s} {'on' if r['planner'] else 'off':8s} {r['ticks']:>7} {pe['p50']:>8.0f} "
              f"{pe['p99']:>8.0f} {pe['max']:>8.0f} {we['p99']:>9.0f} {tw['p50']:>9.0f} {tw['p99']:>9.0f} "
              f"{r['overruns']:>8}")
    out = {"hz": args.hz, "seconds": args.seconds, "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "load_average": os.getloadavg(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from firmware_bridge.atomic_file import atomic_write_text

    atomic_write_text(args.out, json.dumps(out, indent=2))
    png = args.out.with_suffix(".png")
    plot(rows, args.hz, png)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
