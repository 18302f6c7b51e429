"""The README's speed table: edgedp's backends against LeRobot's own eager loop, same weights, one run per row.

Each row is one `edgedp bench --vs-lerobot` process: LeRobot 0.4.4's DiffusionPolicy (select_action, its
venv, 1 thread) alternating round-robin with edgedp's backends (1 thread), median of repeats, CPU named.

    python benchmarks/vs_lerobot.py --out benchmarks/results/vs_lerobot            # every row
    python benchmarks/vs_lerobot.py --only common --out /tmp/x                     # one row

Rows: ``paper`` (U-Net 512/1024/2048, 251.5 M: LeRobot writes the weights, edgedp imports them),
``common`` (the shared LeRobot fixture pusht_1cam: U-Net 64/128/256 + full ResNet-18), ``small``
(edgedp's small preset: LeRobot cannot build its width-16 ResNet, so its reference is edgedp's eager
fp32 loop with a diffusers scheduler, marked as such).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "lerobot" / "pusht_1cam"

# name, checkpoint, vs LeRobot, backends, repeats (stages), loop repeats (chunks)
ROWS = [
    ("paper", "preset:pusht_paper", True, "eager:fp32,cpu-int8:int8", 3, 5),
    ("common", str(FIXTURE), True,
     "eager:fp32,onnxruntime:fp32,onnxruntime-loop:fp32,onnxruntime-loop:int8,cpu-int8:int8", 5, 9),
    ("small", "preset:small", False, "eager:fp32,onnxruntime-loop:fp32,onnxruntime-loop:int8,cpu-int8:int8", 5, 9),
]


def row_lines(name: str, report: dict) -> list[str]:
    lr = report.get("lerobot_chunk_ms")
    ref = lr if lr is not None else report.get("reference_chunk_ms")
    ref_name = "LeRobot select_action" if lr is not None else "edgedp eager + diffusers (no LeRobot equivalent)"
    best = min(report["results"].items(), key=lambda kv: kv[1]["chunk_ms"])
    out = []
    for label, r in report["results"].items():
        ratio = ref / r["chunk_ms"]
        mark = " **best**" if label == best[0] else ""
        out.append(f"| {name} | {ref_name} {ref:.0f} | {label}{mark} | {r['chunk_ms']:.1f} | {ratio:.2f}x | "
                   f"{r['step_ms']:.2f} | {r['encoder_ms']:.1f} | {100 * r['roofline_fraction']:.0f}% | "
                   f"{r['action_rmse_vs_fp32']:.4f} | {r['obs_action_rmse_vs_fp32']:.4f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    from edgedp.cli import main as edgedp_main

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/vs_lerobot")
    ap.add_argument("--only", default=None, help="one row: paper, common or small")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lerobot-python", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| model | reference chunk ms | edgedp backend | chunk ms | ratio | step ms | encoder ms | "
             "of roofline | RMSE vs fp32 (cond) | RMSE vs fp32 (obs->action) |", "|---" * 10 + "|"]
    machine = None
    for name, ckpt, vs, pairs, reps, loops in ROWS:
        if args.only and name != args.only:
            continue
        path = out / f"{name}_k{args.steps}.json"
        argv_row = ["bench", ckpt, "--steps", str(args.steps), "--json", str(path), "--backends", pairs,
                    "--repeats", str(reps), "--loop-repeats", str(loops), "--warmup", "1", "--threads", "1"]
        if vs:
            argv_row.append("--vs-lerobot")
            if args.lerobot_python:
                argv_row += ["--lerobot-python", args.lerobot_python]
        t0 = time.time()
        print("edgedp " + " ".join(argv_row), file=sys.stderr)
        code = edgedp_main(argv_row)
        print(f"[{name}] {time.time() - t0:.0f} s wall", file=sys.stderr)
        if code:
            return code
        report = json.loads(path.read_text())
        machine = report["machine"]
        lines += row_lines(name, report)
    if machine:
        lines += ["", f"CPU: {machine['name']}, 1 thread each side, K={args.steps}, batch 1; measured read bandwidth "
                      f"{machine['bandwidth_gbs']:.1f} GB/s; flags {' '.join(machine.get('cpu_flags', []))}."]
    (out / f"summary{'_' + args.only if args.only else ''}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
