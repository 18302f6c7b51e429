"""Device-clock → host-monotonic conversion (firmware_bridge/realsense/clock.py)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from firmware_bridge.realsense.clock import AnchoredClock, DeviceClock


def simulate(clock: DeviceClock, n: int, period: float, offset: float, latency, drift: float = 0.0):
    """Frames captured every `period` s on a device clock running (1 + drift) fast; returns (capture, estimate)."""
    caps, ests = [], []
    for i in range(n):
        cap = 100.0 + i * period
        dev_ms = (cap - offset) * (1 + drift) * 1000
        arrival = cap + latency(i)
        caps.append(cap)
        ests.append(clock.to_host(dev_ms, "hardware_clock", arrival))
    return np.array(caps), np.array(ests)


def test_min_filter_recovers_capture_time_despite_jittery_latency():
    rng = np.random.default_rng(0)
    lat = 0.004 + rng.exponential(0.006, size=300)
    lat[::17] = 0.004  # now and then a frame arrives with the minimum transport latency
    clock = DeviceClock(window_s=2.0)
    cap, est = simulate(clock, 300, 1 / 30, offset=-5000.0, latency=lambda i: lat[i])
    # after the first few frames the error is the minimum latency, not the jitter
    err = est[20:] - cap[20:]
    assert np.all(err >= -1e-9) and np.all(err <= 0.0040001)
    assert np.std(est[20:] - cap[20:]) < 1e-6
    assert np.all(est <= cap + lat + 1e-12)  # never later than arrival


def test_window_follows_clock_drift():
    clock = DeviceClock(window_s=1.0)
    # device clock 200 ppm slow for 60 s: offsets grow, so a since-start minimum would lag by ~12 ms
    cap, est = simulate(clock, 1800, 1 / 30, offset=3.0, latency=lambda i: 0.002, drift=-200e-6)
    assert abs((est[-1] - cap[-1]) - 0.002) < 0.0005


def test_clock_jump_restarts_the_estimate():
    clock = DeviceClock()
    clock.to_host(1000.0, "hardware_clock", 50.0)
    assert clock.offset == pytest.approx(49.0)
    # the device restarted: its clock is back near zero
    t = clock.to_host(10.0, "hardware_clock", 60.0)
    assert clock.resets == 1 and clock.offset == pytest.approx(59.99) and t == pytest.approx(60.0)


def test_system_and_global_time_are_wall_clock_moved_to_monotonic():
    clock = DeviceClock()
    now_wall, now_mono = time.time(), time.monotonic()
    t = clock.to_host((now_wall - 0.010) * 1000, "global_time", now_mono + 1.0)
    assert t == pytest.approx(now_mono - 0.010, abs=0.002)
    t = clock.to_host((now_wall - 0.010) * 1000, "system_time", now_mono - 0.5)
    assert t == pytest.approx(now_mono - 0.5)  # clamped: a frame is not captured after it arrived


def test_anchored_clock_keeps_recorded_spacing():
    clock = AnchoredClock()
    assert clock.to_host(5000.0, "hardware_clock", 10.0) == 10.0
    assert clock.to_host(5033.0, "hardware_clock", 10.001) == pytest.approx(10.033)
    # a looped/restarted file re-anchors
    assert clock.to_host(5000.0, "hardware_clock", 20.0) == 20.0
