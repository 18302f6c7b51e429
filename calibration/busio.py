"""Reading joint angles for calibration, where a missed status packet is a retry, not a failure.

Calibration is not time-critical: a sync read that times out once (a busy CPU, a noisy cable) is
simply repeated; only repeated failures reach the user.
"""
from __future__ import annotations

import time

import numpy as np


def read_q(bus, retries: int = 5, pause_s: float = 0.01) -> np.ndarray:
    for attempt in range(retries):
        try:
            return np.asarray(bus.read().q, dtype=float)
        except Exception:  # noqa: BLE001 - the bus driver's timeout/CRC errors; the last one is re-raised
            if attempt == retries - 1:
                raise
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def read_state(bus, retries: int = 5, pause_s: float = 0.005):
    """bus.read() (a JointState with its time), retried like read_q."""
    for attempt in range(retries):
        try:
            return bus.read()
        except Exception:  # noqa: BLE001 - see read_q
            if attempt == retries - 1:
                raise
            time.sleep(pause_s)
    raise AssertionError("unreachable")
