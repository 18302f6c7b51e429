"""ChunkRing handoff against multiprocessing.Queue: latency, throughput, and a torn-read stress count.

* latency: the producer process hands over one 8x7 float64 chunk every millisecond (sleeping in between),
  stamped with the monotonic clock (system-wide, so comparable across processes); the consumer polls,
  yielding the core between polls (ring), or blocks in get() (queue) and records receive time - stamp.
* throughput: the producer hands over chunks as fast as it can for a fixed time; for the ring that is
  publishes per second (it never waits: newest wins), for the queue puts per second with a consumer
  draining it.
* stress: millions of handoffs with a CRC per slot, producer in another process and in another thread;
  the consumer verifies every read. Any torn read would be counted.

    python benchmarks/ring_handoff.py --stress 2000000 --out benchmarks/results/ring_handoff.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgedp.runtime.ring import ChunkRing, RingSpec  # noqa: E402
from edgedp.runtime.ring_stress import stress_processes, stress_threads  # noqa: E402

SHAPE = (8, 7)


def _ring_producer(spec: RingSpec, n: int, period: float, go) -> None:
    ring = ChunkRing.attach(spec)
    data = np.random.default_rng(0).standard_normal(SHAPE)
    go.wait()
    t_next = time.monotonic()
    for _ in range(n):
        if period:
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        ring.publish(data, t0=time.monotonic(), dt=0.1)
    ring.close()


def _queue_producer(q, n: int, period: float, go) -> None:
    data = np.random.default_rng(0).standard_normal(SHAPE)
    go.wait()
    t_next = time.monotonic()
    for _ in range(n):
        if period:
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        q.put((time.monotonic(), data))
    q.put(None)


def ring_latency(n: int, period: float) -> dict:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    with ChunkRing.create(*SHAPE, slots=4) as ring:
        p = ctx.Process(target=_ring_producer, args=(ring.spec, n, period, go), daemon=True)
        p.start()
        out = np.empty(SHAPE)
        lat = []
        last = 0
        go.set()
        deadline = time.monotonic() + n * period + 30
        while last < n and time.monotonic() < deadline:
            h = ring.read_newest(out, after_seq=last)
            if h is None:
                os.sched_yield()  # poll, but let the producer have the core when both share one
                continue
            lat.append(time.monotonic() - h.t0)
            last = h.seq
        p.join(5)
    a = np.array(lat) * 1e6
    return {"received": len(a), "sent": n, "p50_us": float(np.percentile(a, 50)),
            "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max())}


def queue_latency(n: int, period: float) -> dict:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    q = ctx.Queue()
    p = ctx.Process(target=_queue_producer, args=(q, n, period, go), daemon=True)
    p.start()
    lat = []
    go.set()
    while True:
        item = q.get()
        if item is None:
            break
        lat.append(time.monotonic() - item[0])
    p.join(5)
    a = np.array(lat) * 1e6
    return {"received": len(a), "sent": n, "p50_us": float(np.percentile(a, 50)),
            "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max())}


def ring_throughput(n: int) -> dict:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    with ChunkRing.create(*SHAPE, slots=4) as ring:
        p = ctx.Process(target=_ring_producer, args=(ring.spec, n, 0.0, go), daemon=True)
        p.start()
        time.sleep(0.5)  # let the child import and attach
        out = np.empty(SHAPE)
        reads = 0
        last = 0
        go.set()
        t0 = time.perf_counter()
        while last < n:
            h = ring.read_newest(out, after_seq=last)
            if h is not None:
                reads += 1
                last = h.seq
            else:
                os.sched_yield()
        dt = time.perf_counter() - t0
        p.join(5)
    return {"handoffs": n, "seconds": dt, "per_second": n / dt, "consumer_reads": reads}


def queue_throughput(n: int) -> dict:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    q = ctx.Queue()
    p = ctx.Process(target=_queue_producer, args=(q, n, 0.0, go), daemon=True)
    p.start()
    time.sleep(0.5)
    go.set()
    t0 = time.perf_counter()
    got = 0
    while q.get() is not None:
        got += 1
    dt = time.perf_counter() - t0
    p.join(5)
    return {"handoffs": got, "seconds": dt, "per_second": got / dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-n", type=int, default=3000)
    ap.add_argument("--period-ms", type=float, default=1.0)
    ap.add_argument("--throughput-n", type=int, default=100_000)
    ap.add_argument("--stress", type=int, default=2_000_000, help="handoffs per stress run (process and thread)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ring_handoff.json"))
    args = ap.parse_args()
    res: dict = {"chunk_shape": SHAPE, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    res["latency"] = {"ring": ring_latency(args.latency_n, args.period_ms / 1e3),
                      "queue": queue_latency(args.latency_n, args.period_ms / 1e3)}
    res["throughput"] = {"ring": ring_throughput(args.throughput_n), "queue": queue_throughput(args.throughput_n)}
    print(f"{'':8s} {'lat p50 µs':>11s} {'lat p99 µs':>11s} {'lat max µs':>11s} {'handoffs/s':>12s}")
    for k in ("ring", "queue"):
        lat, thr = res["latency"][k], res["throughput"][k]
        print(f"{k:8s} {lat['p50_us']:>11.1f} {lat['p99_us']:>11.1f} {lat['max_us']:>11.0f} {thr['per_second']:>12.0f}")
    if args.stress:
        sp = stress_processes(args.stress, timeout=1800)
        st = stress_threads(max(1, args.stress // 2), timeout=1800)
        res["stress"] = {"processes": sp, "threads": st}
        for name, s in (("processes", sp), ("threads", st)):
            print(f"stress ({name}): {s['last_seq']} of {s['published']} handoffs seen in {s['seconds']:.1f} s, "
                  f"{s['reads']} verified reads (newest wins), torn reads {s['torn']}, out-of-order {s['non_monotonic']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from firmware_bridge.atomic_file import atomic_write_text

    atomic_write_text(args.out, json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
