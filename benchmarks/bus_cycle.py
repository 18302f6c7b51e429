"""Servo bus cycle: one Sync Read (or Fast Sync Read) of Present Position + one Sync Write of Goal Position for
6 servos, at 1 Mbps and 4 Mbps, with the emulator reproducing the wire time of every byte (and without).

The emulator runs in its own process (`edgedp emulate`) so that its timing and its GIL do not distort the
driver's. For each case it reports the measured cycle (median, p99), the theoretical wire time
(bytes x 10 bits / baud, return delay 0) and the driver's own CPU time per cycle (thread CPU time of the
loop: the driver blocks in select() while bytes are on the wire, so waiting costs no CPU).
`--soak S` adds an S-second run with 1 % CRC corruption + 1 % dropped answers (in-process emulator) and checks
that the driver's counts equal the injected ones and every value read equals the servos' true position.

    python benchmarks/bus_cycle.py --json bus_cycle.json [--cycles 2000] [--soak 10]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from edgedp.app import BusFactory, BusTuning, apply_joint_calibration, bus_factory
from edgedp.config import parse_config
from firmware_bridge.atomic_file import atomic_write_text
from firmware_bridge.dynamixel.units import RAD_PER_TICK

N_SERVOS = 6
MODEL = "xm430-w350"


def make_bus(port: str, baud: int, fast: bool, tuning: BusTuning) -> BusFactory:
    """The bus recipe from the assembly point (edgedp/app.py) for N_SERVOS servos on `port` (an emulator this
    script runs itself: `edgedp emulate` in its own process, or an in-process one for the soak)."""
    cfg = parse_config({"robot": {"bus": {"port": "emulator", "baud": baud, "fast_sync_read": "on" if fast else "off"},
                                  "joints": [{"name": f"j{i}", "id": i, "model": MODEL, "min": -3.0, "max": 3.0,
                                              "max_velocity": 5.0, "max_acceleration": 50.0}
                                             for i in range(1, N_SERVOS + 1)]},
                        "policy": {"checkpoint": "preset:small"}})
    joints = apply_joint_calibration(cfg)[0]
    # no profile limits: the servos follow each goal at once, as before this script used the assembly point
    joints = [j.model_copy(update={"max_velocity": None, "max_acceleration": None}) for j in joints]
    return bus_factory(cfg, joints, tuning, port=port)


def wire_bytes(n: int, data_len: int, fast: bool) -> int:
    """Bytes on the wire for one cycle: read instruction + status packet(s) + sync write (no reply)."""
    read_inst = 14 + n
    status = (8 + n * (data_len + 4)) if fast else n * (11 + data_len)
    write_inst = 14 + n * (1 + 4)
    return read_inst + status + write_inst


def start_emulator(baud: int, wire_time: bool) -> tuple[subprocess.Popen, str]:
    folder = tempfile.mkdtemp(prefix="bus_cycle_")
    port_file = os.path.join(folder, "port")
    servos = ",".join(f"{i}:{MODEL}" for i in range(1, N_SERVOS + 1))
    cmd = [sys.executable, "-m", "edgedp.cli", "emulate", "--servos", servos, "--baud", str(baud), "--port-file", port_file]
    if wire_time:
        cmd.append("--wire-time")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("edgedp emulate did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, f.read().strip()


def run_case(baud: int, wire_time: bool, fast: bool, cycles: int) -> dict:
    proc, port = start_emulator(baud, wire_time)
    try:
        factory = make_bus(port, baud, fast, BusTuning(torque_off_on_close=True, tick_budget_s=0.05))
        with factory() as bus:
            bus.set_torque(True)
            q0 = bus.read().q
            for _ in range(50):  # warm-up
                bus.write_goal(q0)
                bus.read()
            wall = np.empty(cycles)
            cpu = np.empty(cycles)
            pc, tt = time.perf_counter, time.thread_time
            ru0 = resource.getrusage(resource.RUSAGE_THREAD)
            for k in range(cycles):
                goal = q0 + 0.2 * np.sin(k * 0.01)
                t0, c0 = pc(), tt()
                bus.write_goal(goal)
                bus.read()
                cpu[k] = tt() - c0
                wall[k] = pc() - t0
            ru1 = resource.getrusage(resource.RUSAGE_THREAD)
            stats = bus.stats()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    nbytes = wire_bytes(N_SERVOS, 4, fast)
    return {
        "baud": baud, "wire_time": wire_time, "read": "fast sync read" if fast else "sync read",
        "servos": N_SERVOS, "cycles": cycles,
        "cycle_median_us": float(np.median(wall) * 1e6), "cycle_p99_us": float(np.percentile(wall, 99) * 1e6),
        "wire_bytes": nbytes, "wire_theory_us": nbytes * 10 / baud * 1e6,
        "driver_cpu_median_us": float(np.median(cpu) * 1e6), "driver_cpu_mean_us": float(cpu.mean() * 1e6),
        # user = Python driver + SDK code, system = the kernel's serial/pty I/O on the driver's behalf
        "driver_user_us": (ru1.ru_utime - ru0.ru_utime) / cycles * 1e6,
        "driver_sys_us": (ru1.ru_stime - ru0.ru_stime) / cycles * 1e6,
        "retries": stats["retries"], "timeouts": stats["timeouts"],
    }


def soak(seconds: float, fast: bool) -> dict:
    from firmware_bridge.dynamixel.emulator import Emulator

    ids = list(range(1, N_SERVOS + 1))
    with Emulator({i: MODEL for i in ids}, baud=1_000_000, seed=7) as emu:
        # a 100 ms margin: on a shared CPU no timeout should come from the scheduler, only from injected drops
        factory = make_bus(emu.port_name, 1_000_000, fast, BusTuning(torque_off_on_close=True, timeout_margin_ms=100.0,
                                                                     tick_budget_s=5.0, max_retries=50))
        with factory() as bus:
            rng = np.random.default_rng(1)
            emu.faults.reset_counts()
            emu.faults.set(crc_rate=0.01, drop_rate=0.01)
            reads = wrong = 0
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                truth = rng.integers(-200000, 200000, size=len(ids))
                with emu.lock:
                    for sid, t in zip(ids, truth):
                        emu._find(sid).set_external_position(ticks=float(t))
                q = bus.read().q
                wrong += int(not np.array_equal(np.rint(q / RAD_PER_TICK + 2048).astype(np.int64), truth))
                reads += 1
            emu.faults.clear()
            got = bus.stats()
        inj = emu.faults.counts.as_dict()
    return {"seconds": seconds, "read": "fast sync read" if fast else "sync read", "reads": reads,
            "wrong_values_accepted": wrong, "injected": inj,
            "reported": {k: got[k] for k in ("crc_errors", "timeouts", "retries", "failed_reads", "dropped")},
            "counts_match": got["crc_errors"] == inj["crc_corrupted"] and got["timeouts"] == inj["dropped"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of fault soak per read mode (0: skip)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    results = []
    for baud in (1_000_000, 4_000_000):
        for wire in (True, False):
            for fast in (False, True):
                results.append(run_case(baud, wire, fast, args.cycles))
    hdr = (f"{'baud':>8} {'wire':>5} {'read':>15} {'median us':>10} {'p99 us':>9} {'theory us':>10} {'cpu us':>7} "
           f"{'user us':>8} {'sys us':>7}")
    print(f"bus cycle, {N_SERVOS} x {MODEL}, {args.cycles} cycles each (sync write + read of Present Position)")
    print(hdr)
    for r in results:
        print(f"{r['baud']:>8} {str(r['wire_time']):>5} {r['read']:>15} {r['cycle_median_us']:>10.0f} "
              f"{r['cycle_p99_us']:>9.0f} {r['wire_theory_us']:>10.0f} {r['driver_cpu_median_us']:>7.0f} "
              f"{r['driver_user_us']:>8.0f} {r['driver_sys_us']:>7.0f}")
    soaks = []
    if args.soak > 0:
        for fast in (False, True):
            s = soak(args.soak, fast)
            soaks.append(s)
            print(f"soak {s['seconds']:g} s, {s['read']}: {s['reads']} reads, injected {s['injected']['crc_corrupted']} CRC "
                  f"+ {s['injected']['dropped']} drops, reported {s['reported']['crc_errors']} CRC + "
                  f"{s['reported']['timeouts']} timeouts, counts match: {s['counts_match']}, "
                  f"wrong values accepted: {s['wrong_values_accepted']}")
    if args.json:
        out = {"cases": results, "soak": soaks, "host_cpus": os.cpu_count(), "load_avg": os.getloadavg()}
        atomic_write_text(args.json, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
