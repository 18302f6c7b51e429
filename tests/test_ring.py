"""ChunkRing: newest-complete semantics, wraparound, and no torn reads under thread and process stress."""
from __future__ import annotations

import numpy as np
import pytest

from edgedp.runtime.ring import ChunkRing
from edgedp.runtime.ring_stress import stress_processes, stress_threads


def test_empty_ring_reads_nothing():
    with ChunkRing.create(8, 2) as ring:
        out = np.zeros((8, 2))
        assert ring.read_newest(out) is None
        assert ring.newest_seq() == 0


def test_consumer_gets_newest_complete_chunk_only_once():
    with ChunkRing.create(8, 2) as ring:
        out = np.zeros((8, 2))
        for i in range(5):
            ring.publish(np.full((3 + i % 2, 2), float(i)), t0=10.0 + i, dt=0.05)
        h = ring.read_newest(out)
        assert (h.seq, h.t0, h.dt, h.length) == (5, 14.0, 0.05, 3)
        assert np.all(out[:3] == 4.0)
        assert ring.read_newest(out, after_seq=h.seq) is None
        ring.publish(np.ones((8, 2)), t0=20.0, dt=0.05)
        h2 = ring.read_newest(out, after_seq=h.seq)
        assert h2.seq == 6 and h2.length == 8 and np.all(out == 1.0)


def test_wraparound_many_times_over_slots():
    with ChunkRing.create(4, 3, slots=3, checksum=True) as ring:
        out = np.zeros((4, 3))
        last = 0
        for i in range(1, 1000):
            data = np.arange(12, dtype=float).reshape(4, 3) + i
            ring.publish(data, t0=float(i), dt=0.1)
            if i % 7 == 0:  # the consumer falls behind, then catches up to the newest
                h = ring.read_newest(out, after_seq=last)
                assert h.seq == i and np.array_equal(out, data)
                last = h.seq
        assert ring.torn_reads == 0


def test_producer_never_overwrites_the_slot_being_read():
    """While the consumer holds a slot (announced), the producer cycles through the others."""
    with ChunkRing.create(2, 1, slots=3) as ring:
        out = np.zeros((2, 1))
        ring.publish(np.array([[1.0], [1.0]]), 0.0, 1.0)
        ring.read_newest(out)  # announces slot 0 and keeps it announced
        held = ring._act[0].copy()
        for i in range(50):
            ring.publish(np.full((2, 1), 100.0 + i), float(i), 1.0)
        assert np.array_equal(ring._act[0], held)


def test_checksum_detects_a_rewritten_slot():
    """The torn-read detector itself must be able to fail, or the stress tests prove nothing."""
    with ChunkRing.create(4, 2, checksum=True) as ring:
        out = np.zeros((4, 2))
        ring.publish(np.ones((4, 2)), 0.0, 0.1)
        ring._act[0][2, 1] = 5.0  # simulate a producer write racing the copy
        ring.read_newest(out)
        assert ring.torn_reads == 1


def test_bad_chunk_shape_is_refused():
    with ChunkRing.create(4, 2) as ring:
        with pytest.raises(ValueError):
            ring.publish(np.ones((5, 2)), 0.0, 0.1)
    with pytest.raises(ValueError):
        ChunkRing.create(4, 2, slots=2)


@pytest.mark.parametrize("t0,dt,field", [(0.0, 0.0, "dt"), (0.0, -0.1, "dt"), (0.0, float("nan"), "dt"),
                                         (0.0, float("inf"), "dt"), (float("-inf"), 0.1, "t0"),
                                         (float("nan"), 0.1, "t0")])
def test_malformed_header_is_refused_at_publish(t0, dt, field):
    """The servo loop can never see a chunk it cannot execute: nothing is published, the error names the field."""
    with ChunkRing.create(4, 2) as ring:
        ring.publish(np.ones((2, 2)), 5.0, 0.1)
        with pytest.raises(ValueError, match=rf"^chunk {field}: "):
            ring.publish(np.zeros((2, 2)), t0, dt)
        out = np.zeros((4, 2))
        h = ring.read_newest(out)
        assert h.seq == 1 and h.t0 == 5.0 and np.all(out[:2] == 1.0)  # still the last good chunk


def test_non_finite_actions_are_refused_at_publish():
    with ChunkRing.create(4, 2) as ring:
        bad = np.ones((3, 2))
        bad[2, 0] = np.inf
        with pytest.raises(ValueError, match=r"chunk actions: non-finite value inf at step 2, joint 0"):
            ring.publish(bad, 1.0, 0.1)
        with pytest.raises(ValueError, match=r"chunk dim"):
            ring.publish(np.ones((3, 3)), 1.0, 0.1)
        assert ring.newest_seq() == 0


def test_untimed_ring_takes_samples_with_their_own_times():
    """The joint-state ring (timed=False) carries (t, q) rows; its header times are unused and not checked."""
    with ChunkRing.create(4, 3, timed=False) as ring:
        assert ring.publish(np.ones((2, 3)), 0.0, 0.0) == 1


def test_thread_stress_no_torn_reads():
    stats = stress_threads(60_000)
    assert stats["last_seq"] == 60_000
    assert stats["torn"] == 0 and stats["non_monotonic"] == 0
    assert stats["reads"] > 0


def test_process_stress_no_torn_reads():
    stats = stress_processes(200_000)
    assert stats["exitcode"] == 0
    assert stats["last_seq"] == 200_000
    assert stats["torn"] == 0 and stats["non_monotonic"] == 0
    assert stats["reads"] > 100


def test_atomic_word_fast_and_public_paths_agree():
    """The direct call into the atomics primitive and the package's public API read/write the same word.

    The fast path must actually be the one in use (the atomics release installed here exposes it): if it silently fell
    back, this test would compare the public API with itself and prove nothing."""
    import atomics

    from edgedp.runtime.ring import AtomicU64

    with ChunkRing.create(2, 1) as ring:
        assert ring._pub._fast and ring._reading._fast  # the ring itself runs on the fast path
        buf = ring._shm.buf
        fast, public = AtomicU64(buf[16:24]), AtomicU64(buf[16:24])
        assert fast._fast
        public._fast = False
        try:
            fast.store(2**63 + 5, atomics.MemoryOrder.RELEASE)
            assert public.load(atomics.MemoryOrder.ACQUIRE) == 2**63 + 5
            public.store(7, atomics.MemoryOrder.SEQ_CST)
            assert fast.load(atomics.MemoryOrder.SEQ_CST) == 7
        finally:
            fast.close()
            public.close()


# ---------------------------------------------------------------- lookahead rows (real-time inpainting)


def _read_in_child(spec, conn) -> None:
    """The servo process's side: attach by spec, read the newest chunk, send back what its header says."""
    ring = ChunkRing.attach(spec)
    try:
        out = np.zeros((spec.capacity, spec.dim))
        h = ring.read_newest(out)
        conn.send((h.seq, h.t0, h.dt, h.length, h.lookahead, h.executed, out[: h.length].copy()))
    finally:
        conn.close()
        ring.close()


def test_lookahead_count_travels_with_the_chunk_to_another_process():
    """The planner publishes executed rows + lookahead rows; a consumer in another process (the servo process)
    reads how many of them are lookahead from the header, together with the rows."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = np.arange(20, dtype=float).reshape(10, 2) / 7.0
    with ChunkRing.create(10, 2) as ring:
        ring.publish(rows[:8], 3.0, 0.1)  # an older chunk without lookahead first: the newest one must win
        ring.publish(rows, t0=4.0, dt=0.1, lookahead=2)
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_read_in_child, args=(ring.spec, child), daemon=True)
        p.start()
        child.close()
        assert parent.poll(60), "the reading process sent nothing"
        seq, t0, dt, length, lookahead, executed, got = parent.recv()
        p.join(30)
        assert p.exitcode == 0
    assert (seq, t0, dt, length, lookahead, executed) == (2, 4.0, 0.1, 10, 2, 8)
    np.testing.assert_array_equal(got, rows)


def test_chunks_published_without_lookahead_read_as_all_executed():
    """Every caller that does not pass lookahead (crossfade, ensemble, the state ring) is unchanged; a slot reused
    after a chunk with lookahead does not keep the old count."""
    with ChunkRing.create(6, 2, slots=3) as ring:
        out = np.zeros((6, 2))
        for i in range(7):  # cycles every slot, alternating with and without lookahead
            la = 2 if i % 2 else 0
            ring.publish(np.full((6, 2), float(i)), float(i), 0.1, lookahead=la)
            h = ring.read_newest(out, after_seq=i)
            assert (h.lookahead, h.executed) == (la, 6 - la)


@pytest.mark.parametrize("lookahead", [3, 4, -1])
def test_lookahead_that_leaves_nothing_to_execute_is_refused(lookahead):
    with ChunkRing.create(4, 2) as ring:
        with pytest.raises(ValueError, match=r"^chunk lookahead: ") as err:
            ring.publish(np.ones((3, 2)), 0.0, 0.1, lookahead=lookahead)
        assert "\n" not in str(err.value)
        assert ring.newest_seq() == 0  # nothing published


def test_checksum_covers_the_lookahead_count():
    """A header whose lookahead count changed under the reader is a torn read like any other."""
    with ChunkRing.create(4, 2, checksum=True) as ring:
        out = np.zeros((4, 2))
        ring.publish(np.ones((4, 2)), 0.0, 0.1, lookahead=1)
        ring.read_newest(out)
        assert ring.torn_reads == 0
        ring.publish(np.ones((4, 2)), 1.0, 0.1, lookahead=1)
        ring._hdr_u[1][5] = 2  # simulate a producer rewriting the count while the consumer copies
        ring.read_newest(out, after_seq=1)
        assert ring.torn_reads == 1
