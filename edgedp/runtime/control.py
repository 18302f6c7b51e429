"""A small shared-memory control block between the runtime and the servo loop (thread or process).

The stop request and the servo phase are atomic words; the live counters are plain float64 cells read only
for the status line (a counter read mid-update is harmless there), so the servo tick pays no locking.
"""
from __future__ import annotations

import secrets
from multiprocessing import shared_memory

import atomics
import numpy as np

from edgedp.runtime.ring import AtomicU64, _attach_shm, _release_shm

PHASES = ("starting", "waiting", "ramping", "running", "stopping", "stopped", "failed")
LIVE = ("ticks", "overruns", "bus_errors", "safety_clamps", "joins", "uncovered_ticks", "period_error_us",
        "chunks", "max_period_error_us")
_SIZE = 64 + 8 * 32


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

    def set_live(self, name: str, value: float) -> None:
        self.live[LIVE.index(name)] = value

    def read_live(self) -> dict:
        return {k: float(self.live[i]) for i, k in enumerate(LIVE)}

    def close(self) -> None:
        if self._shm is None:
            return
        self.live = None
        self._stop.close()
        self._phase.close()
        self._stop = self._phase = None
        shm, self._shm = self._shm, None
        _release_shm(shm, self._owner)
