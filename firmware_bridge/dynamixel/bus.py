"""The servo bus driver: X-series servos on Protocol 2.0 through the official dynamixel-sdk.

Per tick it sends exactly one Sync Read (or Fast Sync Read) of Present Position (plus Present Velocity and
Present Current when asked) and one Sync Write of Goal Position. Missing or corrupt status packets are
retried, for the servos that lack one, within the tick's budget and counted; a read that cannot be
completed raises BusTimeout instead of returning a guessed value. Conversion between ticks and radians is
vectorised over the joints (units.py); buffers are allocated once at connect().
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from dynamixel_sdk import COMM_RX_CORRUPT, COMM_RX_TIMEOUT, COMM_SUCCESS, GroupSyncRead, GroupSyncWrite

from firmware_bridge.types import JointState
from firmware_bridge.dynamixel.control_table import OPERATING_MODES, X_TABLE, block, hardware_error_names
from firmware_bridge.dynamixel.errors import (BusConfigError, BusDisconnected, BusError, BusOpenError, BusTimeout,
                                              HardwareError, ServoStatusError)
from firmware_bridge.dynamixel.models import (FAST_SYNC_READ_MIN_FIRMWARE, RAD_S2_PER_ACCEL_UNIT,
                                              RAD_S_PER_VELOCITY_UNIT, get_model, model_name)
from firmware_bridge.dynamixel.sdk_io import SdkPacketHandler, SdkPort
from firmware_bridge.dynamixel.units import TickConverter

log = logging.getLogger(__name__)

REG = X_TABLE  # registers by name; addresses and sizes come from the table the emulator enforces
# Present Current (2) | Present Velocity (4) | Present Position (4): one contiguous block, one sync read
FULL_BLOCK = block("Present_Current", "Present_Position")
POSITION_BLOCK = block("Present_Position", "Present_Position")
HEALTH_BLOCK = block("Present_Input_Voltage", "Present_Temperature")
EXTENDED_LIMIT = 1048575

_DISCONNECT_ERRORS: tuple = (OSError,)
try:  # pyserial raises SerialException (an IOError subclass in 3.5, but be explicit)
    from serial import SerialException

    _DISCONNECT_ERRORS = (OSError, SerialException)
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class JointSpec:
    """One joint on the bus, in the robot's units (the runtime builds these from its config)."""

    name: str
    id: int
    model: str
    direction: int = 1
    zero_offset: float = 0.0  # servo angle (rad) where the joint reads 0
    operating_mode: str = "position"  # or "extended_position"
    min: float = -math.pi
    max: float = math.pi
    max_velocity: Optional[float] = None  # rad/s -> Profile Velocity; None leaves the profile unlimited
    max_acceleration: Optional[float] = None  # rad/s^2 -> Profile Acceleration


@dataclass(frozen=True)
class BusSpec:
    """The port and how to use it. port='emulator' starts the built-in emulator with the joints' servos."""

    port: str
    baud: int = 1_000_000
    low_latency: bool = True
    fast_sync_read: str = "auto"  # auto: when every servo's firmware has it; on; off
    read_velocity: bool = False
    read_current: bool = False
    tick_budget_s: float = 0.004  # a read retries missing servos until this much time has passed
    max_retries: int = 3
    # waited beyond wire time + 2 x adapter latency before a status packet counts as missing; None: 2 ms on a
    # serial adapter, 20 ms on a pty (emulated servos are threads that a busy CPU may not schedule at once)
    timeout_margin_ms: Optional[float] = None
    torque_off_on_close: bool = True
    emulator_wire_time: bool = False


class DynamixelBus:
    """ServoBus implementation (firmware_bridge.types.ServoBus) for a chain of X-series servos."""

    def __init__(self, spec: BusSpec, joints: Sequence[JointSpec]):
        if not joints:
            raise ValueError("a bus needs at least one joint")
        if spec.fast_sync_read not in ("auto", "on", "off"):
            raise ValueError(f"fast_sync_read must be auto, on or off, got {spec.fast_sync_read!r}")
        ids = [j.id for j in joints]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate servo ids in {ids}")
        for j in joints:
            get_model(j.model)
            if j.operating_mode not in ("position", "extended_position"):
                raise ValueError(f"joint '{j.name}': operating_mode must be position or extended_position")
            if j.direction not in (1, -1):
                raise ValueError(f"joint '{j.name}': direction must be 1 or -1")
        self.spec = spec
        self.joints = list(joints)
        self.ids = ids
        self.n = len(ids)
        self.emulator = None
        self.port = None
        self.ph = SdkPacketHandler()
        self.fast = False
        self.firmware: dict[int, int] = {}
        self.connected = False
        self._torque_on_by_us = False
        self.counters = {"ticks": 0, "retries": 0, "timeouts": 0, "crc_errors": 0, "dropped": 0,
                         "failed_reads": 0, "status_errors": 0, "goal_clipped": 0,
                         "hardware_errors": {i: 0 for i in ids}}
        self._index = {sid: k for k, sid in enumerate(ids)}

    # ---- lifecycle -----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the port, find every configured servo, check its model, configure it (torque off first)."""
        if self.connected:
            return
        port_name = self.spec.port
        if port_name == "emulator":
            from firmware_bridge.dynamixel.emulator import Emulator

            self.emulator = Emulator({j.id: j.model for j in self.joints}, baud=self.spec.baud,
                                     wire_time=self.spec.emulator_wire_time).start()
            port_name = self.emulator.port_name
        try:
            self._open(port_name)
            self._discover()
            self._configure()
            self._build_buffers()
        except BaseException:
            self._close_port()
            raise
        self.connected = True

    def _open(self, port_name: str) -> None:
        if not os.path.exists(port_name):
            raise BusOpenError(f"serial port {port_name} does not exist (is the adapter plugged in?)")
        is_pty = os.path.realpath(port_name).startswith("/dev/pts/")
        margin = self.spec.timeout_margin_ms
        if margin is None:
            margin = 20.0 if is_pty else 2.0
        port = SdkPort(port_name, latency_ms=16.0, margin_ms=margin)
        try:
            port.openPort()
        except _DISCONNECT_ERRORS as exc:
            raise BusOpenError(f"cannot open {port_name}: {getattr(exc, 'strerror', None) or exc}") from None
        self.port = port
        try:
            if not port.setBaudRate(self.spec.baud):
                raise BusOpenError(f"baud {self.spec.baud} is not supported by dynamixel-sdk on {port_name}")
        except _DISCONNECT_ERRORS as exc:
            raise BusOpenError(f"cannot set {self.spec.baud} baud on {port_name}: {exc}") from None
        low = is_pty  # a pty has no latency timer to wait for
        if self.spec.low_latency and not is_pty:
            try:
                port.ser.set_low_latency_mode(True)
                low = True
            except (ValueError, OSError, AttributeError, NotImplementedError) as exc:
                log.warning("could not set low-latency mode on %s (%s); reads wait up to 16 ms each - "
                            "set /sys/bus/usb-serial/devices/<tty>/latency_timer to 1", port_name, exc)
        port.latency_ms = 1.0 if low else 16.0

    def _discover(self) -> None:
        for j in self.joints:
            number = None
            for _ in range(3):
                num, res, _err = self._io(self.ph.ping, self.port, j.id)
                if res == COMM_SUCCESS:
                    number = num
                    break
            if number is None:
                raise BusConfigError(
                    f"joint '{j.name}': servo id {j.id} did not answer on {self.spec.port} at {self.spec.baud} baud "
                    f"(check power, id and baud with `edgedp scan --port {self.spec.port}`)")
            want = get_model(j.model)
            if number != want.number:
                raise BusConfigError(
                    f"joint '{j.name}': config says {want.name} (model {want.number}) but servo id {j.id} "
                    f"reports model {number} ({model_name(number)})")
            self.firmware[j.id] = self._read(j.id, "Firmware_Version")
        supported = all(fw >= FAST_SYNC_READ_MIN_FIRMWARE for fw in self.firmware.values())
        if self.spec.fast_sync_read == "on" and not supported:
            old = {i: fw for i, fw in self.firmware.items() if fw < FAST_SYNC_READ_MIN_FIRMWARE}
            raise BusConfigError(f"fast_sync_read: on, but servo firmware {old} is older than "
                                 f"v{FAST_SYNC_READ_MIN_FIRMWARE} (use auto or off, or update the firmware)")
        self.fast = self.spec.fast_sync_read == "on" or (self.spec.fast_sync_read == "auto" and supported)

    def _configure(self) -> None:
        """Torque off, then the EEPROM settings (written only when different), then the profile."""
        self._tick_lo = np.empty(self.n)
        self._tick_hi = np.empty(self.n)
        for k, j in enumerate(self.joints):
            self._write(j.id, "Torque_Enable", 0)
            mode = OPERATING_MODES[j.operating_mode]
            for name, value in (("Operating_Mode", mode), ("Return_Delay_Time", 0), ("Drive_Mode", 0)):
                if self._read(j.id, name) != value:
                    self._write(j.id, name, value)
            vlimit = self._read(j.id, "Velocity_Limit")
            pv = 0 if j.max_velocity is None else max(1, min(vlimit, round(j.max_velocity / RAD_S_PER_VELOCITY_UNIT)))
            pa = 0 if j.max_acceleration is None else max(1, min(32767, round(j.max_acceleration / RAD_S2_PER_ACCEL_UNIT)))
            self._write(j.id, "Profile_Acceleration", pa)
            self._write(j.id, "Profile_Velocity", pv)
            if mode == OPERATING_MODES["position"]:
                self._tick_lo[k] = self._read(j.id, "Min_Position_Limit")
                self._tick_hi[k] = self._read(j.id, "Max_Position_Limit")
            else:
                self._tick_lo[k], self._tick_hi[k] = -EXTENDED_LIMIT, EXTENDED_LIMIT

    def _build_buffers(self) -> None:
        full = self.spec.read_velocity or self.spec.read_current
        self._addr, self._len = FULL_BLOCK if full else POSITION_BLOCK
        self._full = full
        self._gsr = GroupSyncRead(self.port, self.ph, self._addr, self._len)
        goal = REG["Goal_Position"]
        self._gsw = GroupSyncWrite(self.port, self.ph, goal.address, goal.size)
        for sid in self.ids:
            self._gsr.addParam(sid)
            self._gsw.addParam(sid, [0, 0, 0, 0])
        self._gsr.makeParam()
        self._rows = bytearray(self.n * self._len)
        dt = np.dtype([("cur", "<i2"), ("vel", "<i4"), ("pos", "<i4")]) if full else np.dtype([("pos", "<i4")])
        self._rec = np.frombuffer(self._rows, dtype=dt)
        self._conv = TickConverter([j.direction for j in self.joints], [j.zero_offset for j in self.joints],
                                   self._tick_lo, self._tick_hi)
        d = np.array([j.direction for j in self.joints], dtype=np.float64)
        self._vel_scale = d * RAD_S_PER_VELOCITY_UNIT
        units = [get_model(j.model).current_unit_a for j in self.joints]
        self._cur_scale = d * np.array([u if u is not None else np.nan for u in units])
        self._pending = [False] * self.n
        self._goal_bytes = np.zeros((self.n, 4), dtype=np.uint8)

    def close(self) -> None:
        """Torque off (if this bus turned it on and torque_off_on_close), then close the port."""
        try:
            if self.connected and self._torque_on_by_us and self.spec.torque_off_on_close:
                try:
                    self.set_torque(False)
                except BusError as exc:
                    log.warning("could not switch torque off while closing: %s", exc)
        finally:
            self.connected = False
            self._close_port()

    def _close_port(self) -> None:
        if self.port is not None:
            try:
                if self.port.ser is not None:
                    self.port.closePort()
            except Exception:
                pass
            self.port = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def __enter__(self) -> "DynamixelBus":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the tick ------------------------------------------------------------------------------------
    def read(self) -> JointState:
        """Present position (and velocity/current when configured) of every joint, in radians."""
        self._need_connected()
        alerts = self._sync_read()
        t = time.monotonic()
        self.counters["ticks"] += 1
        rec = self._rec
        q = self._conv.to_rad(rec["pos"], np.empty(self.n))
        dq = cur = None
        if self._full:
            dq = rec["vel"] * self._vel_scale if self.spec.read_velocity else None
            cur = rec["cur"] * self._cur_scale if self.spec.read_current else None
        state = JointState(q=q, t=t, dq=dq, current=cur)
        if alerts:
            self._raise_hardware(alerts, state)
        return state

    def write_goal(self, q) -> None:
        """Goal positions (rad) for every joint, in one Sync Write; clipped to the servos' limits (counted)."""
        self._need_connected()
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self.n,):
            raise ValueError(f"write_goal needs {self.n} joint positions, got shape {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError(f"write_goal got a non-finite position: {q}")
        before = self._conv.clipped
        ticks = self._conv.to_ticks(q)
        if self._conv.clipped != before:
            self.counters["goal_clipped"] += 1
        self._send_goal_ticks(ticks)

    def _send_goal_ticks(self, ticks: np.ndarray) -> None:
        gb = self._goal_bytes
        gb[:] = np.ascontiguousarray(ticks, dtype="<i4").view(np.uint8).reshape(self.n, 4)
        gsw = self._gsw
        for sid, row in zip(self.ids, gb.tolist()):
            gsw.changeParam(sid, row)
        res = self._io(gsw.txPacket)
        if res != COMM_SUCCESS:
            raise BusTimeout(f"sync write of goal positions failed: {self.ph.getTxRxResult(res)}")

    def set_torque(self, on: bool) -> None:
        """Torque on holds the present pose (goal := present first); off lets the joints go limp.

        Off is what a stop relies on, so it never gives up at the first servo that fails to answer: see
        _torque_off_all."""
        self._need_connected()
        if not on:
            self._torque_off_all()
            return
        self._sync_read()
        self._send_goal_ticks(self._rec["pos"].astype(np.int64))
        for j in self.joints:
            self._write(j.id, "Torque_Enable", 1)
        self._torque_on_by_us = True

    def _torque_off_all(self, rounds: int = 2) -> None:
        """Switch torque off on every servo, then raise one error naming those that did not confirm.

        First one Sync Write of Torque_Enable = 0 to all servos: it needs no status packets, so a servo that
        cannot answer (or answers garbage) still receives it, and one silent servo does not delay the others.
        Then each servo is asked to confirm, independently of the others: a unicast write whose status
        packet comes back clean, or failing that a read of Torque_Enable showing 0 (each with the driver's
        usual retries), for up to `rounds` rounds. A servo that confirmed nothing may still have switched
        off (its replies may be what is lost), but the caller must not assume it did."""
        try:
            torque = REG["Torque_Enable"]
            gsw = GroupSyncWrite(self.port, self.ph, torque.address, torque.size)
            for sid in self.ids:
                gsw.addParam(sid, [0])
            self._io(gsw.txPacket)  # best effort: the confirmations below are what count
        except BusDisconnected:
            raise
        except Exception as exc:  # pragma: no cover - the SDK reports failures by result code, not exceptions
            log.warning("sync write of torque off failed: %s", exc)
        pending = list(self.ids)
        reasons: dict[int, str] = {}
        for _ in range(max(1, rounds)):
            still = []
            for sid in pending:
                why = self._confirm_torque_off(sid)
                if why is not None:
                    reasons[sid] = why
                    still.append(sid)
            pending = still
            if not pending:
                break
        if pending:
            self._torque_on_by_us = True  # close() tries again
            detail = "; ".join(f"servo {sid}: {reasons[sid]}" for sid in pending)
            raise BusTimeout(f"torque off not confirmed by servo{'s' if len(pending) > 1 else ''} "
                             f"{', '.join(str(i) for i in pending)} (the other servos confirmed; {detail})", pending)
        self._torque_on_by_us = False

    def _confirm_torque_off(self, sid: int) -> Optional[str]:
        """None once servo `sid` confirmed torque off, else why not (a port that vanished still raises)."""
        try:
            self._write(sid, "Torque_Enable", 0)
            return None
        except BusDisconnected:
            raise
        except BusError as exc:
            why = str(exc)
        try:
            if self._read(sid, "Torque_Enable") == 0:
                return None
            why += "; Torque_Enable still reads 1"
        except BusDisconnected:
            raise
        except BusError as exc:
            why += f"; read-back failed: {exc}"
        return why

    def health(self) -> dict[int, dict]:
        """Per servo: input voltage (V), temperature (deg C) and hardware errors by name. Two Sync Reads,
        for telemetry between ticks (not part of the tick)."""
        self._need_connected()
        out: dict[int, dict] = {sid: {} for sid in self.ids}
        error_status = REG["Hardware_Error_Status"]
        for addr, size in (HEALTH_BLOCK, (error_status.address, error_status.size)):
            g = GroupSyncRead(self.port, self.ph, addr, size)
            for sid in self.ids:
                g.addParam(sid)
            res = COMM_RX_TIMEOUT
            for _ in range(3):
                res = self._io(g.txRxPacket)
                if res == COMM_SUCCESS:
                    break
                self._count(res)
            if res != COMM_SUCCESS:
                raise BusTimeout(f"health read at address {addr} failed: {self.ph.getTxRxResult(res)}")
            for sid in self.ids:
                if addr == HEALTH_BLOCK[0]:
                    volt, temp = REG["Present_Input_Voltage"], REG["Present_Temperature"]
                    out[sid]["voltage_v"] = g.getData(sid, volt.address, volt.size) / 10.0
                    out[sid]["temperature_c"] = g.getData(sid, temp.address, temp.size)
                else:
                    out[sid]["hardware_errors"] = hardware_error_names(
                        g.getData(sid, error_status.address, error_status.size))
        return out

    def stats(self) -> dict:
        """Counters for telemetry (copies)."""
        out = dict(self.counters)
        out["hardware_errors"] = dict(self.counters["hardware_errors"])
        out["fast_sync_read"] = self.fast
        return out

    # ---- sync read with retries ----------------------------------------------------------------------
    def _sync_read(self) -> list[tuple[int, int]]:
        """Fill self._rows for every servo or raise; returns [(id, error byte)] of servos with the alert bit."""
        deadline = time.perf_counter() + self.spec.tick_budget_s
        pending = self._pending
        for k in range(self.n):
            pending[k] = True
        alerts: list[tuple[int, int]] = []
        attempt = 0
        while True:
            if self.fast:
                self._fast_attempt(alerts)
            else:
                self._plain_attempt(attempt, alerts)
            if not any(pending):
                return alerts
            attempt += 1
            if attempt > self.spec.max_retries or time.perf_counter() >= deadline:
                self.counters["failed_reads"] += 1
                missing = [sid for sid, p in zip(self.ids, pending) if p]
                raise BusTimeout(
                    f"no valid status packet from servo(s) {missing} within the tick budget "
                    f"({self.spec.tick_budget_s * 1e3:.1f} ms, {attempt} attempts; "
                    f"{self.counters['timeouts']} timeouts, {self.counters['crc_errors']} CRC errors so far)", missing)
            self.counters["retries"] += 1

    def _plain_attempt(self, attempt: int, alerts: list) -> None:
        pending = self._pending
        if attempt == 0:
            res = self._io(self._gsr.txPacket)
        else:
            ids = [sid for sid, p in zip(self.ids, pending) if p]
            res = self._io(self.ph.syncReadTx, self.port, self._addr, self._len, ids, len(ids), False)
        if res != COMM_SUCCESS:
            raise BusTimeout(f"sync read could not be sent: {self.ph.getTxRxResult(res)}")
        want = sum(pending)  # status packets still to come in this attempt
        L = self._len
        expect = 11 + L
        rows = self._rows
        index = self._index
        while want:
            rx, res = self._io(self.ph.rxPacket, self.port, False)
            if res == COMM_SUCCESS:
                k = index.get(rx[4], -1)
                if k < 0 or not pending[k]:
                    self.counters["dropped"] += 1  # a late answer to an earlier request, or a stranger
                    continue
                want -= 1
                err = rx[8]
                # length from the LEN field: the SDK un-stuffs in place and leaves the list longer
                if (rx[5] | rx[6] << 8) + 7 != expect or err & 0x7F:
                    self.counters["status_errors"] += 1
                    if err & 0x7F:
                        self.port.is_using = False
                        raise ServoStatusError(rx[4], err, f"sync read at {self._addr}")
                    continue
                if err & 0x80:
                    alerts.append((rx[4], err))
                rows[k * L:(k + 1) * L] = bytes(rx[9:9 + L])
                pending[k] = False
            elif res == COMM_RX_CORRUPT and len(rx) >= 7 and len(rx) >= (rx[5] | rx[6] << 8) + 7:
                # a complete packet with a wrong CRC: its servo stays pending, keep listening for the others
                self.counters["crc_errors"] += 1
                want -= 1
            else:
                self.counters["timeouts"] += want  # nothing more arrived before the deadline
                return

    def _fast_attempt(self, alerts: list) -> None:
        res = self._io(self._gsr.fastSyncReadTxPacket)
        if res != COMM_SUCCESS:
            raise BusTimeout(f"fast sync read could not be sent: {self.ph.getTxRxResult(res)}")
        rx, res = self._io(self.ph.rxPacket, self.port, True)
        L = self._len
        expect = 8 + self.n * (L + 4)
        if res == COMM_RX_TIMEOUT or (res == COMM_RX_CORRUPT and len(rx) < expect):
            self.counters["timeouts"] += 1
            return
        if res != COMM_SUCCESS:
            self.counters["crc_errors"] += 1
            return
        if len(rx) != expect or rx[4] != 0xFE:
            self.counters["status_errors"] += 1
            return
        rows = self._rows
        index = self._index
        off = 8
        seen = [False] * self.n
        for _ in range(self.n):
            err, sid = rx[off], rx[off + 1]
            k = index.get(sid, -1)
            if k < 0 or seen[k]:
                self.counters["status_errors"] += 1
                return
            if err & 0x7F:
                raise ServoStatusError(sid, err, f"fast sync read at {self._addr}")
            if err & 0x80:
                alerts.append((sid, err))
            seen[k] = True
            rows[k * L:(k + 1) * L] = bytes(rx[off + 2:off + 2 + L])
            off += L + 4
        for k in range(self.n):
            self._pending[k] = False

    def _raise_hardware(self, alerts: list[tuple[int, int]], state: JointState) -> None:
        sid, _ = alerts[0]
        bits = 0
        try:
            bits = self._read(sid, "Hardware_Error_Status")
        except BusError:
            pass
        for a, _ in alerts:
            self.counters["hardware_errors"][a] += 1
        raise HardwareError(sid, hardware_error_names(bits), bits, state)

    # ---- single-servo access (configuration, not the tick) -------------------------------------------
    def _read(self, sid: int, name: str) -> int:
        """One register of one servo, by its control-table name (size and sign from the table)."""
        r = REG[name]
        for _ in range(3):
            data, res, err = self._io(self.ph.readTxRx, self.port, sid, r.address, r.size)
            if res == COMM_SUCCESS and len(data) == r.size:
                if err & 0x7F:
                    raise ServoStatusError(sid, err, f"read of {name} (address {r.address})")
                return int.from_bytes(bytes(data), "little", signed=r.signed)
            self._count(res)
        raise BusTimeout(f"servo {sid} did not answer a read of {name} (address {r.address}, 3 attempts)", [sid])

    def _write(self, sid: int, name: str, value: int) -> None:
        """One register of one servo, by its control-table name, confirmed by the servo's status packet."""
        r = REG[name]
        data = list(int(value).to_bytes(r.size, "little", signed=value < 0))
        for _ in range(3):
            res, err = self._io(self.ph.writeTxRx, self.port, sid, r.address, r.size, data)
            if res == COMM_SUCCESS:
                if err & 0x7F:
                    if err & 0x80:  # refused because of a hardware error: say which
                        bits = self._read(sid, "Hardware_Error_Status")
                        self.counters["hardware_errors"][sid] = self.counters["hardware_errors"].get(sid, 0) + 1
                        raise HardwareError(sid, hardware_error_names(bits), bits)
                    raise ServoStatusError(sid, err, f"write {name}={value}")
                return
            self._count(res)
        raise BusTimeout(f"servo {sid} did not confirm write {name}={value} (3 attempts)", [sid])

    def _count(self, res: int) -> None:
        if res == COMM_RX_TIMEOUT:
            self.counters["timeouts"] += 1
        elif res == COMM_RX_CORRUPT:
            self.counters["crc_errors"] += 1
        self.counters["retries"] += 1

    def _io(self, fn, *args):
        """Call into the SDK; a vanished port becomes BusDisconnected (and the SDK's busy flag is reset)."""
        try:
            return fn(*args)
        except _DISCONNECT_ERRORS as exc:
            if self.port is not None:
                self.port.is_using = False
            self.connected = False
            raise BusDisconnected(f"servo bus on {self.spec.port} disconnected: {exc}") from None

    def _need_connected(self) -> None:
        if not self.connected:
            raise BusDisconnected(f"servo bus on {self.spec.port} is not connected (call connect())")
