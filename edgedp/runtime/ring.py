"""ChunkRing: a single-producer single-consumer, lock-free handoff of timed action chunks in shared memory.

Layout (one `multiprocessing.shared_memory` block, so the consumer can live in another process):

    control:  published (u64) = (seq << 8) | slot    -- written with RELEASE, read with ACQUIRE
              reading   (u64) = slot + 1, 0 = none    -- the consumer's hazard: the slot it may be copying
    slot[i]:  header  seq u64, t0 f64, dt f64, length u64, checksum u64, lookahead u64
              actions f64[capacity, dim]

A chunk's last ``lookahead`` rows are not to be executed: the planner sends a few of the chunk's predicted
actions past its executed slice so that the servo's cubic interpolation has two-sided tangents at the slice's
last knots (real-time inpainting, edgedp/runtime/conditioning.py). Every other chunk has lookahead 0.

Why this is correct without locks, also on aarch64 (weak memory order):
  * The producer fills a slot with plain stores, then stores `published` with release order; the
    consumer loads `published` with acquire order, so every store made to the slot before publishing is
    visible to it (release/acquire pairs; the `atomics` package maps them to LDAR/STLR on ARM).
  * A torn read could only happen if the producer rewrote a slot while the consumer copies it. The consumer
    announces the slot it is about to copy in `reading` and then re-checks `published`; the producer reads
    `reading` before choosing a slot and never picks the announced slot or the currently published one.
    These two store-then-load pairs use sequentially consistent order, which forbids the store/load
    reordering that would let both sides miss each other (the classic Dekker pattern).
  * With 3 or more slots the producer always has a free slot, so it never waits: publishing is wait-free,
    and the consumer retries only when a newer chunk was published while it was announcing.

The consumer always gets the newest complete chunk; older unread chunks are simply superseded.
An optional CRC32 over the chunk's bytes (per slot) lets stress tests prove that no read was torn.
"""
from __future__ import annotations

import math
import secrets
import zlib
from dataclasses import dataclass
from multiprocessing import shared_memory

import atomics
import numpy as np

class AtomicU64:
    """An 8-byte word in a shared buffer with explicit-order atomic load/store (the `atomics` package).

    The package's public `load/store` cost ~9 µs per call here (argument checks and a temporary buffer
    per call); the C primitive underneath costs well under a microsecond. When the package exposes that
    primitive (atomics 1.0.x), it is called directly with preallocated result/argument words; the
    operation and its memory order are exactly the same. Otherwise the public API is used.
    """

    def __init__(self, buf):
        self._ctx = atomics.atomicview(buffer=buf, atype=atomics.UINT)
        self._view = self._ctx.__enter__()
        self._fast = False
        try:
            import cffi
            from atomics._impl.enums import OpType

            core = self._view._core
            self._load_fp = core.get_op_func(OpType.LOAD)
            self._store_fp = core.get_op_func(OpType.STORE)
            if self._load_fp is None or self._store_fp is None or core.width != 8:
                raise RuntimeError("no 8-byte load/store")
            self._addr = core.address
            self._ffi = cffi.FFI()
            self._res = self._ffi.new("uint64_t[1]")
            self._arg = self._ffi.new("uint64_t[1]")
            self._res_addr = int(self._ffi.cast("uintptr_t", self._res))
            self._arg_addr = int(self._ffi.cast("uintptr_t", self._arg))
            self._fast = True
        except Exception:
            self._fast = False

    def load(self, order: atomics.MemoryOrder) -> int:
        if self._fast:
            self._load_fp(self._addr, order.value, self._res_addr)
            return int(self._res[0])
        return self._view.load(order=order)

    def store(self, value: int, order: atomics.MemoryOrder) -> None:
        if self._fast:
            self._arg[0] = value
            self._store_fp(self._addr, self._arg_addr, order.value)
            return
        self._view.store(value, order=order)

    def close(self) -> None:
        self._fast = False
        self._load_fp = self._store_fp = None
        self._view = None
        self._ctx.__exit__(None, None, None)


_CTRL = 64  # control block bytes (two u64 words, padded to a cache line)
_HDR = 64  # slot header bytes (padded so the action array stays 8-byte aligned and on its own line)
_ACQ = atomics.MemoryOrder.ACQUIRE
_REL = atomics.MemoryOrder.RELEASE
_SC = atomics.MemoryOrder.SEQ_CST


@dataclass(frozen=True)
class RingSpec:
    """Everything another process needs to attach to a ring (picklable).

    timed: the ring carries timed chunks (actions at t0 + j*dt): `publish` refuses a header with a
    non-finite t0, a dt that is not a positive finite number, or a non-finite action, so the consumer never
    sees one. The servo loop's joint-state snapshots carry their own per-row times (timed=False)."""

    name: str
    slots: int
    capacity: int
    dim: int
    timed: bool = True


@dataclass
class ChunkHeader:
    """One chunk's header: `length` rows were copied, the last `lookahead` of them are for tangents only."""

    seq: int
    t0: float
    dt: float
    length: int
    lookahead: int = 0

    @property
    def executed(self) -> int:
        """Rows the servo executes (the first `length - lookahead`)."""
        return self.length - self.lookahead


def _nbytes(slots: int, capacity: int, dim: int) -> int:
    return _CTRL + slots * (_HDR + capacity * dim * 8)


class ChunkRing:
    """One end (or both, in one process) of a shared-memory SPSC ring of timed chunks.

    Create it with `ChunkRing.create(...)` in the owning process and `ChunkRing.attach(spec)` elsewhere.
    Only one thread may call `publish` and only one may call `read_newest` over the ring's lifetime.
    """

    def __init__(self, shm: shared_memory.SharedMemory, spec: RingSpec, owner: bool, checksum: bool):
        if spec.slots < 3 or spec.slots > 255:
            raise ValueError(f"a ChunkRing needs 3..255 slots, got {spec.slots}")
        self.spec = spec
        self._shm = shm
        self._owner = owner
        self.checksum = checksum
        buf = shm.buf
        # Atomic views hold buffer exports; they are released in close().
        self._pub = AtomicU64(buf[0:8])
        self._reading = AtomicU64(buf[8:16])
        stride = _HDR + spec.capacity * spec.dim * 8
        self._hdr_u = []
        self._hdr_f = []
        self._act = []
        for i in range(spec.slots):
            base = _CTRL + i * stride
            self._hdr_u.append(np.ndarray((8,), dtype=np.uint64, buffer=buf, offset=base))
            self._hdr_f.append(np.ndarray((8,), dtype=np.float64, buffer=buf, offset=base))
            self._act.append(
                np.ndarray((spec.capacity, spec.dim), dtype=np.float64, buffer=buf, offset=base + _HDR)
            )
        self._seq = 0  # producer side: last published sequence number
        self._last_slot = -1
        self.torn_reads = 0  # consumer side: checksum mismatches seen (must stay 0)
        self.retries = 0  # consumer side: announce/re-check rounds lost to a concurrent publish

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def create(cls, capacity: int, dim: int, slots: int = 4, checksum: bool = False,
               timed: bool = True) -> "ChunkRing":
        if capacity < 1 or dim < 1:
            raise ValueError(f"capacity and dim must be >= 1 (got {capacity}, {dim})")
        name = f"edgedp_ring_{secrets.token_hex(6)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=_nbytes(slots, capacity, dim))
        shm.buf[:_CTRL] = bytes(_CTRL)
        return cls(shm, RingSpec(name, slots, capacity, dim, timed), owner=True, checksum=checksum)

    @classmethod
    def attach(cls, spec: RingSpec, checksum: bool = False) -> "ChunkRing":
        shm = _attach_shm(spec.name)
        return cls(shm, spec, owner=False, checksum=checksum)

    # ---- producer -----------------------------------------------------------------------------------
    def publish(self, actions: np.ndarray, t0: float, dt: float, lookahead: int = 0) -> int:
        """Copy a chunk (length x dim) into a free slot and make it the newest; return its sequence number.

        `lookahead`: how many of the last rows are not executed (tangents only; see the module docstring).
        A malformed chunk raises ValueError naming the field (length, dim, lookahead, t0, dt, actions) and
        publishes nothing: the consumer only ever sees chunks it can execute."""
        n = actions.shape[0]
        if n > self.spec.capacity or n < 1:
            raise ValueError(f"chunk length {n} outside 1..{self.spec.capacity}")
        if actions.ndim != 2 or actions.shape[1] != self.spec.dim:
            raise ValueError(f"chunk dim: expected {self.spec.dim} values per step, got shape {actions.shape}")
        lookahead = int(lookahead)
        if not 0 <= lookahead < n:
            raise ValueError(f"chunk lookahead: {lookahead} outside 0..{n - 1} (at least one of {n} rows is executed)")
        if self.spec.timed:
            _check_timed(actions, t0, dt)
        busy = self._reading.load(_SC)
        busy_slot = int(busy) - 1
        slot = (self._last_slot + 1) % self.spec.slots
        while slot == busy_slot or slot == self._last_slot:
            slot = (slot + 1) % self.spec.slots
        seq = self._seq + 1
        hu, hf, act = self._hdr_u[slot], self._hdr_f[slot], self._act[slot]
        act[:n] = actions
        hu[0] = seq
        hf[1] = t0
        hf[2] = dt
        hu[3] = n
        hu[5] = lookahead
        if self.checksum:
            hu[4] = _crc(act, n, seq, t0, dt, lookahead)
        self._pub.store((seq << 8) | slot, _SC)  # release (SC is release plus the Dekker guarantee)
        self._seq = seq
        self._last_slot = slot
        return seq

    # ---- consumer -----------------------------------------------------------------------------------
    def newest_seq(self) -> int:
        return int(self._pub.load(_ACQ)) >> 8

    def read_newest(self, out: np.ndarray, after_seq: int = 0) -> ChunkHeader | None:
        """Copy the newest chunk into `out` (capacity x dim) if its seq is greater than `after_seq`."""
        while True:
            word = int(self._pub.load(_ACQ))
            seq, slot = word >> 8, word & 0xFF
            if seq <= after_seq:
                return None
            self._reading.store(slot + 1, _SC)
            if int(self._pub.load(_SC)) == word:
                break
            self.retries += 1
        hu, hf, act = self._hdr_u[slot], self._hdr_f[slot], self._act[slot]
        n = int(hu[3])
        out[:n] = act[:n]
        header = ChunkHeader(int(hu[0]), float(hf[1]), float(hf[2]), n, int(hu[5]))
        if self.checksum and int(hu[4]) != _crc(out, n, header.seq, header.t0, header.dt, header.lookahead):
            self.torn_reads += 1
        if header.seq != seq:
            self.torn_reads += 1
        return header

    # ---- teardown -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release this end; the creating end also removes the shared memory block."""
        if self._shm is None:
            return
        self._hdr_u = self._hdr_f = self._act = []
        self._pub.close()
        self._reading.close()
        self._pub = self._reading = None
        shm, self._shm = self._shm, None
        _release_shm(shm, self._owner)

    def __enter__(self) -> "ChunkRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_timed(actions: np.ndarray, t0: float, dt: float) -> None:
    if not math.isfinite(t0):
        raise ValueError(f"chunk t0: must be a finite time in seconds, got {t0!r}")
    if not (math.isfinite(dt) and dt > 0.0):
        raise ValueError(f"chunk dt: must be a positive finite number of seconds, got {dt!r}")
    finite = np.isfinite(actions)
    if not finite.all():
        step, joint = (int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"chunk actions: non-finite value {float(actions[step, joint])} at step {step}, joint {joint} "
                         f"({int((~finite).sum())} in all)")


def _crc(act: np.ndarray, n: int, seq: int, t0: float, dt: float, lookahead: int = 0) -> int:
    head = np.array([seq, lookahead], dtype=np.uint64).tobytes() + np.array([t0, dt]).tobytes()
    return zlib.crc32(act[:n].tobytes(), zlib.crc32(head))


def _release_shm(shm: shared_memory.SharedMemory, owner: bool) -> None:
    """Close this end's mapping; the creating end also removes the block (already gone is fine)."""
    shm.close()
    if owner:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def _attach_shm(name: str) -> shared_memory.SharedMemory:
    """Attach without registering with this process's resource tracker (the creator owns unlinking).

    Python < 3.13 registers every attached block and unlinks it when the attaching process exits, which
    would delete the ring under the creator's feet; 3.13 added `track=False` for exactly this.
    """
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    except TypeError:
        pass
    from multiprocessing import resource_tracker

    original = resource_tracker.register

    def _skip(name: str, rtype: str) -> None:
        if rtype != "shared_memory":
            original(name, rtype)

    # A spawned child shares its parent's tracker, so unregistering after the fact would drop the
    # creator's entry too; not registering at all leaves the creator's bookkeeping untouched.
    resource_tracker.register = _skip
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = original
