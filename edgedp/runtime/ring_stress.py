"""Producer/consumer drivers that hammer a ChunkRing, shared by the test suite and benchmarks/ring_handoff.py.

Every chunk carries random data and a CRC in its slot header; the consumer recomputes it on every read, so a
torn read (a slot rewritten while it was being copied) shows up as a checksum mismatch, not as luck.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np

from edgedp.runtime.ring import ChunkRing, RingSpec


def produce(ring: ChunkRing, count: int, seed: int = 0, stop: threading.Event | None = None) -> int:
    """Publish `count` chunks of random length and content; return how many were published."""
    rng = np.random.default_rng(seed)
    cap, dim = ring.spec.capacity, ring.spec.dim
    pool = rng.standard_normal((64, cap, dim))
    lengths = rng.integers(1, cap + 1, size=64)
    for i in range(count):
        if stop is not None and stop.is_set():
            return i
        k = i & 63
        ring.publish(pool[k, : lengths[k]], t0=float(i), dt=0.01)
    return count


def consume(ring: ChunkRing, until_seq: int, timeout: float = 60.0) -> dict:
    """Read newest chunks until `until_seq` has been seen; return read statistics."""
    out = np.empty((ring.spec.capacity, ring.spec.dim))
    last = 0
    reads = 0
    non_monotonic = 0
    deadline = time.monotonic() + timeout
    while last < until_seq and time.monotonic() < deadline:
        h = ring.read_newest(out, after_seq=last)
        if h is None:
            continue
        reads += 1
        if h.seq <= last or h.t0 != float(h.seq - 1):
            non_monotonic += 1
        last = h.seq
    return {"reads": reads, "last_seq": last, "torn": ring.torn_reads, "non_monotonic": non_monotonic,
            "retries": ring.retries}


def _producer_process(spec: RingSpec, count: int, seed: int) -> None:
    ring = ChunkRing.attach(spec, checksum=True)
    try:
        produce(ring, count, seed)
    finally:
        ring.close()


def stress_threads(count: int, capacity: int = 16, dim: int = 7, slots: int = 4, timeout: float = 60.0) -> dict:
    """Producer thread and consumer (this thread) on one ring."""
    with ChunkRing.create(capacity, dim, slots=slots, checksum=True) as ring:
        t = threading.Thread(target=produce, args=(ring, count), daemon=True)
        start = time.perf_counter()
        t.start()
        stats = consume(ring, count, timeout=timeout)
        t.join(timeout=timeout)
        stats["seconds"] = time.perf_counter() - start
    stats["published"] = count
    stats["complete"] = stats["last_seq"] == count
    return stats


def stress_processes(count: int, capacity: int = 16, dim: int = 7, slots: int = 4, timeout: float = 120.0) -> dict:
    """Producer in a spawned process, consumer here: the two sides share only the memory block."""
    ctx = mp.get_context("spawn")
    with ChunkRing.create(capacity, dim, slots=slots, checksum=True) as ring:
        p = ctx.Process(target=_producer_process, args=(ring.spec, count, 1), daemon=True)
        p.start()
        start = time.perf_counter()
        stats = consume(ring, count, timeout=timeout)
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
            p.join()
        stats["seconds"] = time.perf_counter() - start
        stats["exitcode"] = p.exitcode
    stats["published"] = count
    stats["complete"] = stats["last_seq"] == count
    return stats
