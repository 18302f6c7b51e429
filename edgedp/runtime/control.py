"""A small shared-memory control block between the runtime and the servo loop (thread or process).

The stop request and the servo phase are atomic words; the live counters are plain float64 cells read only
for the status line (a counter read mid-update is harmless there), so the servo tick pays no locking. The
counters travel by name (LiveStatus), never by position: adding one cannot shift the others.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, fields
from multiprocessing import shared_memory

import atomics
import numpy as np

from edgedp.runtime.ring import AtomicU64, _attach_shm, _release_shm

PHASES = ("starting", "waiting", "ramping", "running", "stopping", "stopped", "failed")


@dataclass
class LiveStatus:
    """The servo loop's counters for the live status line (written every few ticks, read by the runtime)."""

    ticks: int = 0
    overruns: int = 0
    bus_errors: int = 0
    safety_clamps: int = 0
    joins: int = 0
    uncovered_ticks: int = 0
    period_error_us: float = 0.0
    chunks: int = 0
    max_period_error_us: float = 0.0


LIVE = tuple(f.name for f in fields(LiveStatus))
_CELLS = 32
_SIZE = 64 + 8 * _CELLS
assert len(LIVE) <= _CELLS


class Control:
    def __init__(self, shm: shared_memory.SharedMemory, owner: bool):
        self._shm = shm
        self._owner = owner
        self._stop = AtomicU64(shm.buf[0:8])
        self._phase = AtomicU64(shm.buf[8:16])
        self.live = np.ndarray((32,), dtype=np.float64, buffer=shm.buf, offset=64)

    @property
    def name(self) -> str:
        return self._shm.name

    @classmethod
    def create(cls) -> "Control":
        shm = shared_memory.SharedMemory(name=f"edgedp_ctl_{secrets.token_hex(6)}", create=True, size=_SIZE)
        shm.buf[:_SIZE] = bytes(_SIZE)
        return cls(shm, True)

    @classmethod
    def attach(cls, name: str) -> "Control":
        return cls(_attach_shm(name), False)

    def request_stop(self) -> None:
        self._stop.store(1, atomics.MemoryOrder.RELEASE)

    def stop_requested(self) -> bool:
        return self._stop.load(atomics.MemoryOrder.ACQUIRE) != 0

    def set_phase(self, phase: str) -> None:
        self._phase.store(PHASES.index(phase), atomics.MemoryOrder.RELEASE)

    @property
    def phase(self) -> str:
        return PHASES[int(self._phase.load(atomics.MemoryOrder.ACQUIRE))]

    def write_live(self, status: LiveStatus) -> None:
        self.live[: len(LIVE)] = [getattr(status, name) for name in LIVE]

    def read_live(self) -> LiveStatus:
        cells = self.live[: len(LIVE)].tolist()
        return LiveStatus(**{name: (type(getattr(LiveStatus, name))(v)) for name, v in zip(LIVE, cells)})

    def close(self) -> None:
        if self._shm is None:
            return
        self.live = None
        self._stop.close()
        self._phase.close()
        self._stop = self._phase = None
        shm, self._shm = self._shm, None
        _release_shm(shm, self._owner)
