"""Policy serving on Ray Serve: round-trip overhead, throughput with several robots, a server killed mid-run.

    python benchmarks/serve_throughput.py [--checkpoint C] [--steps K] [--seconds S] [--robots 1 4 16]
                                          [--no-kill-run] [--out benchmarks/results/serve_throughput.json]

1. Overhead: the same observation windows answered by the local policy (predict_chunk with the compiled eager
   sampler, in this process) and by the server on this machine (one client, sequential), interleaved call by
   call so both see the same machine load; p50 / p99 of each and of the difference.
2. Throughput: R simulated robots (threads, one keep-alive connection each) send windows back to back for S
   seconds against one replica, with batching off (max_batch 1), batching on with one batched sampler call
   (stack) and batching on with one call per request (loop); chunks per second and per-robot latency.
3. Kill run: examples/sim.yaml with policy.remote (fallback none, then local); the application is deleted
   after 3 chunks; what the arm did comes from the run's telemetry (chunks, held servo ticks, fault events).

Everything runs on one machine: server and clients share its cores, so these are ratios for this machine,
not for a GPU server. Say so when quoting them, and name the CPU (printed).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgedp.host_info import cpu_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TOKEN = "bench-token-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def windows(policy, n: int) -> list[tuple[dict, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        obs = {}
        for k, shape in policy.feature_shapes.items():
            if len(shape) == 3:
                obs[k] = rng.integers(0, 256, (policy.n_obs_steps, shape[1], shape[2], 3), dtype=np.uint8)
            else:
                obs[k] = rng.uniform(-1, 1, (policy.n_obs_steps, *shape)).astype(np.float32)
        out.append((obs, rng.standard_normal((policy.horizon, policy.action_dim)).astype(np.float32)))
    return out


def deploy(opts, max_batch: int, wait_s: float, batch_mode: str) -> None:
    import dataclasses

    from ray import serve

    from edgedp.serve.server import APP_NAME, application

    serve.run(application(dataclasses.replace(opts, batch_mode=batch_mode), TOKEN, max_batch_size=max_batch,
                          batch_wait_timeout_s=wait_s), name=APP_NAME, route_prefix="/")


def overhead(url: str, policy, sampler, n: int) -> dict:
    from edgedp.serve.client import PolicyClient

    client = PolicyClient(url, TOKEN, 60)
    encoder = sampler.encode if getattr(sampler, "encoder", None) is not None else None
    wins = windows(policy, 8)
    local, remote, diff = [], [], []
    for i in range(n + 3):
        obs, noise = wins[i % len(wins)]
        t0 = time.perf_counter()
        a = policy.predict_chunk(obs, noise, sampler=sampler, encoder=encoder)
        t1 = time.perf_counter()
        b = client.predict(obs, noise)["actions"]
        t2 = time.perf_counter()
        if i < 3:
            continue  # warm-up
        local.append((t1 - t0) * 1e3)
        remote.append((t2 - t1) * 1e3)
        diff.append(remote[-1] - local[-1])
        assert np.allclose(a, b, atol=1e-4), "the server's chunk differs from the local one"
    return {"n": n, "local_ms": {"p50": pct(local, 50), "p99": pct(local, 99)},
            "remote_ms": {"p50": pct(remote, 50), "p99": pct(remote, 99)},
            "overhead_ms": {"p50": pct(diff, 50), "p99": pct(diff, 99)}}


def throughput(url: str, policy, robots: int, seconds: float) -> dict:
    from edgedp.serve.client import PolicyClient

    wins = windows(policy, 4)
    lat: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(robots + 1)
    stop_at = [0.0]

    def robot(i: int) -> None:
        client = PolicyClient(url, TOKEN, 120)
        obs, noise = wins[i % len(wins)]
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            r = client.predict(obs, noise)
            with lock:
                lat.append((time.perf_counter() - t0) * 1e3)
                batches.append(r["batch"])
        client.close()

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(robots)]
    for t in threads:
        t.start()
    t_begin = time.perf_counter()
    stop_at[0] = t_begin + seconds
    start.wait()
    for t in threads:
        t.join(seconds + 300)
    elapsed = time.perf_counter() - t_begin
    return {"robots": robots, "chunks": len(lat), "chunks_per_s": len(lat) / elapsed,
            "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
            "mean_batch": statistics.fmean(batches) if batches else 0.0}


def kill_run(url: str, fallback: str) -> dict:
    """examples/sim.yaml against the server; the application deleted after 3 chunks."""
    from ray import serve

    from edgedp.app import build
    from edgedp.config import parse_config
    from edgedp.runtime.lifecycle import Runtime
    from edgedp.serve.server import APP_NAME
    from example_configs import load_example

    data = load_example()
    data["telemetry"]["live"] = False
    # The emulated servos share this machine with Ray: 100 failed bus ticks (0.2 s) before the watchdog stops the
    # run, instead of the example's 10, so the run shows what the policy fault did rather than a starved emulator.
    data["safety"]["watchdog_failed_ticks"] = 100
    data["policy"]["remote"] = {"url": url, "token": TOKEN, "timeout_ms": 2000, "fallback": fallback}
    cfg = parse_config(data, base=ROOT / "examples")
    with tempfile.TemporaryDirectory() as tmp:
        parts = build(cfg)
        rt = Runtime(parts, 60.0, Path(tmp) / "tel.json", plot=False, live=False, console=None)
        marks = {}

        def chaos():
            while len(rt.tel.chunk_log) < 3:
                time.sleep(0.02)
            marks["t_kill"] = time.monotonic()
            serve.delete(APP_NAME)
            marks["t_deleted"] = time.monotonic()
            time.sleep(4.0)
            rt.request_stop("benchmark done")

        threading.Thread(target=chaos, daemon=True).start()
        code = rt.run()
        tel = json.loads((Path(tmp) / "tel.json").read_text())
    tk = marks["t_kill"]
    before = [c for c in rt.tel.chunk_log if c["t_start"] < tk]
    after = [c for c in rt.tel.chunk_log if c["t_start"] >= tk]
    tl = rt.tel.servo.get("timeline", {})
    held_after = None
    if tl:
        t, cmd = np.asarray(tl["t"]), np.asarray(tl["cmd"])
        v = np.abs(np.diff(cmd, axis=0)) / np.diff(t)[:, None]
        held_after = {"max_cmd_speed_rad_s_after_kill": float(v[t[1:] > tk].max()) if (t > tk).sum() > 1 else None}
    return {"fallback": fallback, "exit_code": code, "chunks_before_kill": len(before), "chunks_after_kill": len(after),
            "uncovered_servo_ticks": tel["uncovered_ticks"], "servo_hz": tel["servo_rate_hz"],
            "policy_source_at_end": tel["policy_source"],
            "events": [{"t_after_kill_s": round(e["t"] - tk, 3), "event": e["event"], "detail": e["detail"][:120]}
                       for e in tel["policy_events"][:12]],
            "planner_errors": tel["planner_errors"], "alerts": tel["alerts"], **(held_after or {})}


def main() -> int:
    from example_configs import load_example

    ex = load_example()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=ex["policy"]["checkpoint"])
    ap.add_argument("--steps", type=int, default=ex["policy"]["steps"])
    ap.add_argument("--seconds", type=float, default=6.0, help="per throughput cell")
    ap.add_argument("--robots", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--overhead-calls", type=int, default=40)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="batching on: how long a batch waits to fill")
    ap.add_argument("--no-kill-run", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_throughput.json")
    ap.add_argument("--repeats", type=int, default=1, help="throughput cells: median chunks/s of this many runs")
    args = ap.parse_args()

    import torch

    from edgedp.compile import get_compiled_sampler
    from edgedp.policy_loading import load_policy
    from edgedp.serve import server
    from edgedp.serve.service import ServeOptions

    torch.set_num_threads(1)
    opts = ServeOptions(args.checkpoint, steps=args.steps, threads=1)
    port = free_port()
    url = server.start(opts, TOKEN, port=port, num_cpus=2, max_batch_size=1, batch_wait_timeout_s=0.0)
    results: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                     "checkpoint": str(args.checkpoint), "steps": args.steps, "threads_per_side": 1,
                     "note": "server and clients on the same shared machine"}
    try:
        policy = load_policy(args.checkpoint, "cpu", args.steps, 0)
        sampler = get_compiled_sampler(policy, "eager", "fp32", args.steps, "cpu")
        results["overhead"] = overhead(url, policy, sampler, args.overhead_calls)
        print(f"overhead: {json.dumps(results['overhead'])}", flush=True)
        cells = []
        wait = args.batch_wait_ms / 1000.0
        results["batch_wait_ms"] = args.batch_wait_ms
        for label, max_batch, wait_s, mode in (("off", 1, 0.0, "loop"), ("on, stacked", 16, wait, "stack"),
                                                ("on, loop", 16, wait, "loop")):
            deploy(opts, max_batch, wait_s, mode)
            for r in args.robots:
                runs = [throughput(url, policy, r, args.seconds) for _ in range(args.repeats)]
                runs.sort(key=lambda c: c["chunks_per_s"])
                cell = {"batching": label, **runs[len(runs) // 2],  # the median run
                        "chunks_per_s_all": [round(c["chunks_per_s"], 2) for c in runs]}
                cells.append(cell)
                print(f"{label:<12} robots {r:>2}: {cell['chunks_per_s']:6.2f} chunks/s  "
                      f"p50 {cell['latency_ms']['p50']:7.1f} ms  p99 {cell['latency_ms']['p99']:7.1f} ms  "
                      f"mean batch {cell['mean_batch']:.2f}", flush=True)
        results["throughput"] = cells
        if not args.no_kill_run:
            runs = []
            for fallback in ("none", "local"):
                deploy(opts, 16, wait, "auto")
                runs.append(kill_run(url, fallback))
                print(f"kill run: {json.dumps(runs[-1])}", flush=True)
            results["kill_runs"] = runs
    finally:
        server.stop()
    results["load_avg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"cpu: {results['cpu']} ({results['cores']} cores, shared); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
