"""Denoiser latency by backend and precision, roofline fraction, and the reference, on this machine.

Same code as `edgedp bench` (edgedp.compile.bench).  Two ways to run it:

    python benchmarks/denoise_latency.py --preset small --steps 10 --json out/small_k10.json
    python benchmarks/denoise_latency.py --matrix --out benchmarks/results

``--matrix`` runs the four measurements the compile note reports (small and pusht_paper presets,
K = 10 and K = 100), with fewer repeats where one chunk takes seconds, and writes one JSON + PNG
per run plus summary.md (the table that goes into docs/compile.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

MATRIX = [
    # preset, K, repeats (stages), loop repeats (whole chunks), chunk warm-up, backend pairs
    ("small", 10, 20, 10, 1, None),
    ("small", 100, 10, 3, 1, None),
    ("pusht_paper", 10, 5, 3, 1, None),
    # one paper-size K=100 float chunk takes ~20 s on 2 quiet cores: fewer repeats, no bf16/inductor
    ("pusht_paper", 100, 3, 2, 0, "eager:fp32,cpu-int8:int8"),
]
PAIRS = "eager:fp32,eager:bf16,inductor:fp32,onnxruntime:int8,cpu-int8:int8"


def summary_rows(preset: str, k: int, report: dict) -> list[str]:
    rows = []
    ref = report.get("reference_chunk_ms")
    for label, r in report["results"].items():
        rows.append(
            f"| {preset} | {k} | {label} | {r['chunk_ms']:.1f} | {r['step_ms']:.2f} | {r['encoder_ms']:.2f} | "
            f"{r['scheduler_ms']:.3f} | {r['roofline_step_ms']:.2f} | {100 * r['roofline_fraction']:.0f}% | "
            f"{r['action_rmse_vs_fp32']:.4f} | {ref:.1f} | {r.get('speedup_vs_reference', float('nan')):.2f}x |")
    return rows


def run_matrix(out: Path, pairs: str, only: str | None) -> int:
    from edgedp.cli import main as edgedp_main

    out.mkdir(parents=True, exist_ok=True)
    lines = ["| preset | K | backend/precision | chunk ms | step ms | encoder ms | sched ms | roofline ms | "
             "of roofline | RMSE vs fp32 | reference chunk ms | speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for preset, k, reps, loops, warm, run_pairs in MATRIX:
        if only and f"{preset}:{k}" != only and preset != only:
            continue
        path = out / f"{preset}_k{k}.json"
        t0 = time.time()
        code = edgedp_main(["bench", "--preset", preset, "--steps", str(k), "--json", str(path),
                            "--repeats", str(reps), "--loop-repeats", str(loops), "--warmup", str(warm),
                            "--backends", run_pairs or pairs])
        print(f"[{preset} K={k}] {time.time() - t0:.0f} s wall", file=sys.stderr)
        if code:
            return code
        lines += summary_rows(preset, k, json.loads(path.read_text()))
    m = json.loads(path.read_text())["machine"]
    lines.append("")
    lines.append(f"Machine: {m['name']}, {m['threads']} threads, torch {m['torch']}, measured read bandwidth "
                 f"{m['bandwidth_gbs']:.1f} GB/s, peak GEMM " +
                 ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["peak_gflops"].items()) +
                 f"; flags {' '.join(m.get('cpu_flags', []))}.")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", action="store_true", help="run the documented preset x K matrix")
    ap.add_argument("--out", default="benchmarks/results", help="--matrix output directory")
    ap.add_argument("--only", default=None, help="--matrix: only this preset (NAME) or run (NAME:K)")
    ap.add_argument("--pairs", default=PAIRS, help="--matrix: backend:precision list")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for everything, reference included (default: torch's choice)")
    args, rest = ap.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matrix:
        return run_matrix(Path(args.out), args.pairs, args.only)
    from edgedp.cli import main as edgedp_main

    return edgedp_main(["bench", *rest])


if __name__ == "__main__":
    sys.exit(main())
