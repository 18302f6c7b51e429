"""Camera path latency in simulation: what the virtual RealSense (and the pure-Python fallback) cost.

For each stream (96x96 and 640x480, with and without depth) the simulated scene is rendered by the virtual
RealSense (firmware_bridge/realsense/virtual.py: an rs.software_device), read back by the real driver
(firmware_bridge/realsense/camera.py: sensors, syncer, align, clock conversion) and measured per frame:

  render            Scene.render wall time (perf_counter, in the device's feeder thread)
  capture -> driver the frame's age when the driver thread has it: driver arrival − the device's capture
                    time (the capture time the virtual device stamped, kept in VirtualRealSense.sent_at)
  t − capture       the driver's host timestamp minus that same known capture time: the timestamp error
  process CPU       CPU seconds of this process / wall seconds (100 % = one core)
  drops             frame-number gaps the driver counted

Rows marked `scene` are the fallback used when pyrealsense2 cannot be imported
(firmware_bridge/sim/scene_camera.py): no device clock, no transport; its `t` is the capture time, so only
render, driver age (capture -> the frame is published) and CPU mean anything there.

    python benchmarks/camera_latency.py --seconds 3 --out benchmarks/results/camera_latency.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_bridge.sim import Scene  # noqa: E402
from firmware_bridge.sim.scene_camera import SceneCamera  # noqa: E402

STREAMS = [(96, 96, False), (96, 96, True), (640, 480, False), (640, 480, True)]


def _moving_arm():
    """Joint angles that change with time, so every frame differs (a static picture could hide copies)."""
    def angles() -> np.ndarray:
        t = time.monotonic()
        return np.array([0.6 * np.sin(1.3 * t), 0.8 * np.sin(0.7 * t + 1.0)])
    return angles


class _TimedRender:
    """Wraps Scene.render and records its wall time per call (thread-safe append)."""

    def __init__(self, render):
        self.render = render
        self.ms: list[float] = []

    def __call__(self, t: float):
        t0 = time.perf_counter()
        out = self.render(t)
        self.ms.append((time.perf_counter() - t0) * 1e3)
        return out


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def measure_realsense(width: int, height: int, depth: bool, fps: int, seconds: float, warmup: float) -> dict:
    from firmware_bridge.realsense.camera import RealSenseSettings
    from firmware_bridge.realsense.sim_camera import VirtualCamera

    scene = Scene(_moving_arm(), width=width, height=height, depth=depth)
    render = _TimedRender(scene.render)
    cam = VirtualCamera(render, scene.intrinsics,
                        RealSenseSettings(width=width, height=height, fps=fps, depth=depth, name="bench"))
    samples: list[tuple[float, float, float]] = []  # (capture, driver arrival, driver t)
    lock = threading.Lock()
    recording = threading.Event()

    def on_frame(f) -> None:
        if not recording.is_set():
            return
        cap = cam.virtual.sent_at.get(f.frame_number)
        if cap is not None:
            with lock:
                samples.append((cap, f.arrival, f.t))

    cam.subscribe(on_frame)
    cam.start()
    try:
        time.sleep(warmup)
        render.ms.clear()
        drops0 = cam.counters()["drops"]
        recording.set()
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu1, wall1 = _cpu_seconds(), time.monotonic()
        recording.clear()
        counters = cam.counters()
    finally:
        cam.stop()
    with lock:
        s = np.array(samples) if samples else np.zeros((0, 3))
    age = (s[:, 1] - s[:, 0]) * 1e3
    err = (s[:, 2] - s[:, 0]) * 1e3
    return _row("realsense", width, height, depth, fps, render.ms, age, err, (cpu1 - cpu0) / (wall1 - wall0),
                len(s), counters["drops"] - drops0)


def measure_scene(width: int, height: int, depth: bool, fps: int, seconds: float, warmup: float) -> dict:
    scene = Scene(_moving_arm(), width=width, height=height, depth=depth)
    render = _TimedRender(scene.render)
    cam = SceneCamera(render, scene.intrinsics, fps=fps, depth=depth, name="bench")
    ages: list[float] = []
    cam.start()
    try:
        time.sleep(warmup)
        render.ms.clear()
        drops0 = cam.drops
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        end = wall0 + seconds
        seq = cam.latest().seq
        n = 0
        while time.monotonic() < end:
            f = cam.wait_for_frame(timeout=1.0, after_seq=seq)
            if f is None:
                continue
            ages.append((time.monotonic() - f.t) * 1e3)  # capture -> a waiting consumer has it
            seq = f.seq
            n += 1
        cpu1, wall1 = _cpu_seconds(), time.monotonic()
        drops = cam.drops - drops0
    finally:
        cam.stop()
    return _row("scene", width, height, depth, fps, render.ms, np.array(ages), np.zeros(0),
                (cpu1 - cpu0) / (wall1 - wall0), n, drops)


def _row(path, width, height, depth, fps, render_ms, age_ms, err_ms, cpu, frames, drops) -> dict:
    return {
        "path": path, "width": width, "height": height, "depth": depth, "fps": fps, "frames": int(frames),
        "drops": int(drops),
        "render_ms": {"median": _pct(render_ms, 50), "p95": _pct(render_ms, 95)},
        "capture_to_driver_ms": {"median": _pct(age_ms, 50), "p95": _pct(age_ms, 95),
                                 "max": float(np.max(age_ms)) if len(age_ms) else None},
        "timestamp_error_ms": {"median": _pct(err_ms, 50), "p95": _pct(err_ms, 95),
                               "max_abs": float(np.max(np.abs(err_ms))) if len(err_ms) else None},
        "process_cpu_percent": 100.0 * cpu,
    }


def _fmt(x, spec="{:.2f}") -> str:
    return "-" if x is None else spec.format(x)


def print_table(rows: list[dict]) -> None:
    head = (f"{'path':9s} {'stream':>22s} {'render med/p95 ms':>18s} {'capture->driver med/p95 ms':>27s} "
            f"{'t-capture med/p95 ms':>21s} {'CPU %':>6s} {'frames':>6s} {'drops':>5s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        stream = f"{r['width']}x{r['height']} {'RGB+depth' if r['depth'] else 'RGB'} @{r['fps']}"
        rm, ag, er = r["render_ms"], r["capture_to_driver_ms"], r["timestamp_error_ms"]
        print(f"{r['path']:9s} {stream:>22s} {_fmt(rm['median'], '{:.3f}') + ' / ' + _fmt(rm['p95'], '{:.3f}'):>18s} "
              f"{_fmt(ag['median']) + ' / ' + _fmt(ag['p95']):>27s} {_fmt(er['median'], '{:.3f}') + ' / ' + _fmt(er['p95'], '{:.3f}'):>21s} "
              f"{r['process_cpu_percent']:6.1f} {r['frames']:6d} {r['drops']:5d}")


def _write_json(path: Path, data: dict) -> None:
    from firmware_bridge.atomic_file import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row (after --warmup)")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--no-scene", action="store_true", help="skip the pure-Python fallback rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "camera_latency.json")
    args = ap.parse_args()
    if not args.seconds > 0 or args.fps <= 0:
        ap.error("--seconds and --fps must be positive")
    rows = []
    try:
        importlib.import_module("pyrealsense2")
        have_rs = True
    except ImportError as exc:
        print(f"pyrealsense2 unavailable ({exc}): measuring the scene fallback only", file=sys.stderr)
        have_rs = False
    for w, h, d in STREAMS:
        if have_rs:
            rows.append(measure_realsense(w, h, d, args.fps, args.seconds, args.warmup))
        if not args.no_scene:
            rows.append(measure_scene(w, h, d, args.fps, args.seconds, args.warmup))
    print_table(rows)
    load = os.getloadavg()
    out = {"benchmark": "camera_latency", "seconds_per_row": args.seconds, "fps": args.fps,
           "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "loadavg": [round(x, 2) for x in load]},
           "rows": rows}
    _write_json(args.out, out)
    print(f"load average {load[0]:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
