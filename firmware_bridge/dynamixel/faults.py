"""Fault injection for the emulator: what a noisy or failing bus does, at rates a test sets, with exact counts.

Each status packet the emulator is about to send gets, in this order, one draw for "drop" (never sent), one
for "corrupt CRC" (sent with a wrong CRC) and one for "delay" (sent `delay_s` late). Hardware error bits are
raised on chosen servos (set the Hardware Error Status register and the alert bit, as the firmware does).
The counts say exactly what was injected, so a test can compare them with what the driver reported.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class FaultCounts:
    responses: int = 0  # status packets the servos wanted to send
    dropped: int = 0
    crc_corrupted: int = 0
    delayed: int = 0
    hardware_errors: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"responses": self.responses, "dropped": self.dropped, "crc_corrupted": self.crc_corrupted,
                "delayed": self.delayed, "hardware_errors": dict(self.hardware_errors)}


class Faults:
    """Rates and counts; thread-safe because tests set them while the emulator thread serves."""

    def __init__(self, seed: Optional[int] = None):
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.crc_rate = 0.0
        self.drop_rate = 0.0
        self.delay_rate = 0.0
        self.delay_s = 0.0
        self.pending_hardware: dict[int, int] = {}
        self.hardware_error_rate = 0.0
        self.hardware_error_bits = 0x20
        self.silent_ids: set[int] = set()  # servos whose every status packet is dropped (a servo gone deaf-mute)
        self.counts = FaultCounts()

    def set(self, crc_rate: Optional[float] = None, drop_rate: Optional[float] = None,
            delay_rate: Optional[float] = None, delay_s: Optional[float] = None,
            hardware_error: Optional[dict[int, int]] = None, hardware_error_rate: Optional[float] = None,
            hardware_error_bits: Optional[int] = None, seed: Optional[int] = None,
            silent_ids: Optional[set[int]] = None) -> None:
        """Change rates (0..1) and/or raise hardware error bits {servo id: bits} on the next instruction.

        hardware_error_rate: chance per instruction that one random servo raises `hardware_error_bits`.
        silent_ids: servos that still execute instructions but whose status packets are all dropped (one
        failing servo or cable segment on an otherwise healthy bus)."""
        for name, v in (("crc_rate", crc_rate), ("drop_rate", drop_rate), ("delay_rate", delay_rate),
                        ("hardware_error_rate", hardware_error_rate)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {v}")
        with self._lock:
            if seed is not None:
                self._rng.seed(seed)
            if crc_rate is not None:
                self.crc_rate = float(crc_rate)
            if drop_rate is not None:
                self.drop_rate = float(drop_rate)
            if delay_rate is not None:
                self.delay_rate = float(delay_rate)
            if delay_s is not None:
                self.delay_s = float(delay_s)
            if hardware_error_rate is not None:
                self.hardware_error_rate = float(hardware_error_rate)
            if hardware_error_bits is not None:
                self.hardware_error_bits = int(hardware_error_bits) & 0xFF
            if hardware_error:
                self.pending_hardware.update({int(k): int(v) for k, v in hardware_error.items()})
            if silent_ids is not None:
                self.silent_ids = {int(i) for i in silent_ids}

    def clear(self) -> None:
        """All rates back to zero (counts are kept: call reset_counts for those)."""
        with self._lock:
            self.crc_rate = self.drop_rate = self.delay_rate = self.hardware_error_rate = 0.0
            self.delay_s = 0.0
            self.pending_hardware.clear()
            self.silent_ids = set()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts = FaultCounts()

    def take_hardware(self, ids: list[int]) -> dict[int, int]:
        """Hardware errors to raise now: the ones set explicitly, plus a random one at the set rate."""
        with self._lock:
            out, self.pending_hardware = self.pending_hardware, {}
            if self.hardware_error_rate and ids and self._rng.random() < self.hardware_error_rate:
                sid = self._rng.choice(ids)
                out[sid] = out.get(sid, 0) | self.hardware_error_bits
            for k in out:
                self.counts.hardware_errors[k] = self.counts.hardware_errors.get(k, 0) + 1
            return out

    def decide(self, servo_id: Optional[int] = None) -> tuple[bool, bool, float]:
        """(drop, corrupt, delay seconds) for one status packet (from `servo_id`), counted."""
        with self._lock:
            c = self.counts
            c.responses += 1
            if servo_id is not None and servo_id in self.silent_ids:
                c.dropped += 1
                return True, False, 0.0
            if self.drop_rate and self._rng.random() < self.drop_rate:
                c.dropped += 1
                return True, False, 0.0
            corrupt = bool(self.crc_rate) and self._rng.random() < self.crc_rate
            if corrupt:
                c.crc_corrupted += 1
            delay = 0.0
            if self.delay_rate and self._rng.random() < self.delay_rate:
                c.delayed += 1
                delay = self.delay_s
            return False, corrupt, delay
