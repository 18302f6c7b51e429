"""End-to-end latency of the whole sim loop: from the capture of the observation a chunk was planned on to
the first servo tick that executes that chunk (when the servo loop adopts it), with its parts.

Runs examples/sim.yaml (emulated servos, virtual RealSense, `small` preset) through `edgedp.app.build` and the
runtime, once with the servo loop as a thread and once as a process, and reads the run telemetry:

  observation age   capture of the newest frame -> observation assembled (camera + polling latency)
  inference         observation assembly start -> chunk published (encode + K denoising steps + copy)
  end to end        capture -> first executed action of the resulting chunk

    python benchmarks/e2e_latency.py --seconds 15 --out benchmarks/results/e2e_latency.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgedp.app import build  # noqa: E402
from edgedp.config import parse_config  # noqa: E402
from edgedp.runtime.lifecycle import Runtime  # noqa: E402


def run(mode: str, seconds: float, steps: int, config: Path) -> dict:
    data = yaml.safe_load(config.read_text())
    data["rates"]["servo_in_process"] = mode == "process"
    data["policy"]["steps"] = steps
    data["telemetry"]["live"] = False
    cfg = parse_config(data, base=config.parent)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tel.json"
        code = Runtime(build(cfg), seconds, path, plot=False, live=False, console=None).run()
        tel = json.loads(path.read_text())
    return {"mode": mode, "exit_code": code, "steps": steps, "chunks": tel["chunks"],
            "observation_age_ms": tel["observation_age_ms"], "inference_ms": tel["stages_ms"]["inference"],
            "encode_ms": tel["stages_ms"]["encode"], "sample_ms": tel["stages_ms"]["sample"],
            "e2e_ms": tel["e2e_latency_ms"], "dropped_steps": tel["dropped_steps"],
            "uncovered_ticks": tel["uncovered_ticks"], "servo_period_error_us": tel["servo_period_error_us"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "sim.yaml")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/e2e_latency.json"))
    args = ap.parse_args()
    rows = [run(m, args.seconds, args.steps, args.config) for m in ("thread", "process")]
    f = lambda s, k: "-" if s[k] is None else f"{s[k]:.1f}"  # noqa: E731
    print(f"{'servo':8s} {'chunks':>6s} {'obs age p50/p99':>16s} {'inference p50/p99':>18s} "
          f"{'end-to-end p50/p99/max ms':>26s} {'dropped':>8s}")
    for r in rows:
        a, i, e = r["observation_age_ms"], r["inference_ms"], r["e2e_ms"]
        print(f"{r['mode']:8s} {r['chunks']:>6} {f(a, 'p50') + '/' + f(a, 'p99'):>16s} "
              f"{f(i, 'p50') + '/' + f(i, 'p99'):>18s} {f(e, 'p50') + '/' + f(e, 'p99') + '/' + f(e, 'max'):>26s} "
              f"{r['dropped_steps']:>8}")
    out = {"seconds": args.seconds, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from firmware_bridge.atomic_file import atomic_write_text

    atomic_write_text(args.out, json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
