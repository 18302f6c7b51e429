"""A chain of Protocol 2.0 servos on a pseudo-terminal, for the real dynamixel-sdk to talk to.

`Emulator(servos={1: "xm430-w350", 2: "xm430-w350"})` opens a pty pair, serves the master side from a thread
and exposes the slave side as `port_name` (e.g. /dev/pts/7), which the SDK opens like a U2D2. Servos answer
only when the host's baud (read from the pty's termios) matches their Baud Rate register, honour Return
Delay Time and Status Return Level, and can emulate the wire time of every byte at the configured baud
(`wire_time=True`) for realistic cycle timing. `faults` injects drops, CRC corruption, delays and hardware
errors. `servo(id)` and `present_positions_rad()` give the true state to tests and to the simulated scene.
"""
from __future__ import annotations

import os
import pty
import select
import termios
import threading
import time
import tty
from typing import Iterable, Optional, Union

from firmware_bridge.dynamixel import protocol as P
from firmware_bridge.dynamixel.control_table import BAUD_CODES, BAUD_TO_CODE
from firmware_bridge.dynamixel.faults import Faults
from firmware_bridge.dynamixel.models import FAST_SYNC_READ_MIN_FIRMWARE, get_model
from firmware_bridge.dynamixel.servo import EmulatedServo
from firmware_bridge.dynamixel.units import RAD_PER_TICK

_TERMIOS_BAUDS: dict[int, int] = {}
for _b in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000,
           1500000, 2000000, 2500000, 3000000, 3500000, 4000000):
    _c = getattr(termios, f"B{_b}", None)
    if _c is not None:
        _TERMIOS_BAUDS[_c] = _b


def parse_servo_spec(spec: str) -> dict[int, tuple[str, Optional[int]]]:
    """'1:xm430-w350,2:xl330-m288@44' -> {1: ('xm430-w350', None), 2: ('xl330-m288', 44)} (@ = firmware)."""
    out: dict[int, tuple[str, Optional[int]]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if ":" not in item:
            raise ValueError(f"servo '{item}' must be ID:MODEL, e.g. 1:xm430-w350")
        sid, model = item.split(":", 1)
        fw: Optional[int] = None
        if "@" in model:
            model, fws = model.split("@", 1)
            if not fws.isdigit():
                raise ValueError(f"servo '{item}': firmware version after @ must be a number")
            fw = int(fws)
        if not sid.strip().isdigit() or not 0 <= int(sid) <= 252:
            raise ValueError(f"servo '{item}': id must be a number 0..252")
        get_model(model.strip())  # raises with the list of known models
        if int(sid) in out:
            raise ValueError(f"servo id {int(sid)} appears twice")
        out[int(sid)] = (model.strip().lower(), fw)
    if not out:
        raise ValueError("no servos given (e.g. 1:xm430-w350,2:xm430-w350)")
    return out


class Emulator:
    def __init__(self, servos: Union[dict, str], baud: int = 1_000_000, wire_time: bool = False,
                 seed: Optional[int] = None, firmware: Optional[dict[int, int]] = None,
                 precise_timing: bool = False, check_baud: bool = True):
        if baud not in BAUD_TO_CODE:
            raise ValueError(f"{baud} is not a Dynamixel baud rate (allowed: {', '.join(map(str, BAUD_CODES.values()))})")
        spec = parse_servo_spec(servos) if isinstance(servos, str) else {
            int(k): (v, None) if isinstance(v, str) else tuple(v) for k, v in servos.items()}
        firmware = firmware or {}
        self.baud = baud
        self.wire_time = wire_time
        self.precise_timing = precise_timing
        self.check_baud = check_baud
        self.faults = Faults(seed)
        self.lock = threading.RLock()
        self._servos: dict[int, EmulatedServo] = {}
        for sid, (model, fw) in sorted(spec.items()):
            self._servos[sid] = EmulatedServo(sid, get_model(model), firmware.get(sid, fw), BAUD_TO_CODE[baud],
                                              lock=self.lock)
        self.port_name: Optional[str] = None
        self.stats = {"instructions": 0, "crc_errors_in": 0, "ignored_wrong_baud": 0}
        self._master = self._slave = None
        self._wake_r = self._wake_w = None
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self._bus_clock = 0.0

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "Emulator":
        if self._running:
            return self
        self._master, self._slave = pty.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port_name = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._parser = P.PacketParser()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="dxl-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the pty (a driver still attached sees its port vanish)."""
        if not self._running and self._master is None:
            return
        self._running = False
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = self._wake_r = self._wake_w = None

    disconnect = stop  # "the bus vanishes": what a test calls mid-run

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- state accessors (thread-safe) ---------------------------------------------------------------
    def servo(self, dxl_id: int) -> EmulatedServo:
        """The emulated servo with this id, advanced to now. Its `position_ticks`, `position_rad` and
        `set_external_position` are thread-safe; hold `emulator.lock` to read several raw registers at once."""
        with self.lock:
            s = self._find(dxl_id)
            if s is None:
                raise KeyError(f"no emulated servo with id {dxl_id} (ids: {sorted(self.ids())})")
            s.refresh(time.monotonic())
            return s

    def ids(self) -> list[int]:
        with self.lock:
            return sorted(s.id for s in self._servos.values())

    def present_positions_rad(self) -> dict[int, float]:
        """{id: servo angle rad} of every servo at this instant (cheap; what the simulated scene reads)."""
        now = time.monotonic()
        with self.lock:
            out = {}
            for s in self._servos.values():
                s.refresh(now)
                out[s.id] = (s.get("Present_Position") - 2048) * RAD_PER_TICK
            return out

    def _find(self, dxl_id: int) -> Optional[EmulatedServo]:
        for s in self._servos.values():
            if s.id == dxl_id:
                return s
        return None

    # ---- serving -------------------------------------------------------------------------------------
    def _host_baud(self) -> Optional[int]:
        try:
            return _TERMIOS_BAUDS.get(termios.tcgetattr(self._master)[5])
        except (termios.error, OSError):
            return None

    def _serve(self) -> None:
        master, wake = self._master, self._wake_r
        while self._running:
            try:
                ready, _, _ = select.select([master, wake], [], [], 0.5)
            except (OSError, ValueError):
                return
            if wake in ready or not self._running:
                return
            if master not in ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:
                # nobody has the slave open right now; wait for the host to reopen it
                time.sleep(0.001)
                continue
            t_rx = time.perf_counter()
            for pkt in self._parser.feed(data):
                self._handle(pkt, t_rx)

    def _sleep_until(self, t: float) -> None:
        now = time.perf_counter()
        if self.precise_timing:
            if t - now > 0.0003:
                time.sleep(t - now - 0.0002)
            while time.perf_counter() < t:
                pass
        elif t > now:
            time.sleep(t - now)

    def _send(self, packets: Iterable[tuple[EmulatedServo, bytes]], t_rx: float, instr_len: int) -> None:
        """Send status packets one after another as a bus would: return delay, then the bytes' wire time."""
        byte_time = 10.0 / self.baud
        clock = self._bus_clock
        for servo, pkt in packets:
            drop, corrupt, delay = self.faults.decide(servo.id)
            clock += servo.get("Return_Delay_Time") * 2e-6  # 2 us per unit
            if self.wire_time:
                clock += len(pkt) * byte_time
            clock += delay
            if drop:
                continue
            if corrupt:
                pkt = pkt[:-1] + bytes((pkt[-1] ^ 0x5A,))
            self._sleep_until(clock)
            try:
                os.write(self._master, pkt)
            except OSError:
                return
        self._bus_clock = clock

    def _handle(self, pkt: P.Packet, t_rx: float) -> None:
        # the instruction occupies the bus for its own bytes, after whatever was on the bus before it
        clock = max(self._bus_clock, t_rx)
        if self.wire_time:
            clock += pkt.raw_length * 10.0 / self.baud
        self._bus_clock = clock
        with self.lock:
            out = self._execute(pkt, t_rx)
        if out:
            self._send(out, t_rx, pkt.raw_length)

    def _listening(self) -> list[EmulatedServo]:
        """Servos whose baud matches the host's (a servo at another baud sees only noise)."""
        host = self._host_baud() if self.check_baud else None
        servos = sorted(self._servos.values(), key=lambda s: s.id)
        if host is None:
            return servos
        listening = [s for s in servos if BAUD_CODES.get(s.get("Baud_Rate")) == host]
        if len(listening) != len(servos):
            self.stats["ignored_wrong_baud"] += 1
        return listening

    def _execute(self, pkt: P.Packet, t_rx: float) -> list[tuple[EmulatedServo, bytes]]:
        self.stats["instructions"] += 1
        servos = self._listening()
        if not servos:
            return []
        now = time.monotonic()
        hw = self.faults.take_hardware([s.id for s in servos])
        for sid, bits in hw.items():
            s = self._find(sid)
            if s is not None:
                s.refresh(now)
                s.raise_hardware_error(bits)
        by_id = {s.id: s for s in servos}
        target = by_id.get(pkt.id)
        broadcast = pkt.id == P.BROADCAST_ID
        if not pkt.crc_ok:
            self.stats["crc_errors_in"] += 1
            if target is not None and target.get("Status_Return_Level") == 2:
                return [(target, P.build_status(target.id, target.error_byte(P.ERR_CRC)))]
            return []
        if not broadcast and target is None:
            return []
        inst, prm = pkt.instruction, pkt.params
        h = _HANDLERS.get(inst)
        if h is None:
            if broadcast:
                return []
            return self._status(target, P.ERR_INSTRUCTION, b"", always=False)
        return h(self, pkt, servos, by_id, target, broadcast, prm)

    @staticmethod
    def _status(servo: EmulatedServo, code: int, data: bytes = b"", always: bool = False,
                read: bool = False) -> list[tuple[EmulatedServo, bytes]]:
        level = servo.get("Status_Return_Level")
        if not always and (level == 0 or (level == 1 and not read)):
            return []
        return [(servo, P.build_status(servo.id, servo.error_byte(code), data))]

    # ---- instructions --------------------------------------------------------------------------------
    def _ping(self, pkt, servos, by_id, target, broadcast, prm):
        targets = servos if broadcast else [target]
        out = []
        for s in targets:
            num = s.get("Model_Number")
            out += self._status(s, 0, bytes((num & 0xFF, num >> 8, s.firmware)), always=True)
        return out

    def _read(self, pkt, servos, by_id, target, broadcast, prm):
        if broadcast:
            return []
        if len(prm) != 4:
            return self._status(target, P.ERR_DATA_LENGTH, read=True)
        addr, length = prm[0] | prm[1] << 8, prm[2] | prm[3] << 8
        err, data = target.read(addr, length)
        return self._status(target, err, data, read=True)

    def _write(self, pkt, servos, by_id, target, broadcast, prm):
        if len(prm) < 3:
            return [] if broadcast else self._status(target, P.ERR_DATA_LENGTH)
        addr = prm[0] | prm[1] << 8
        targets = servos if broadcast else [target]
        out = []
        for s in targets:
            old_id = s.id
            err = s.write(addr, bytes(prm[2:]))
            if not broadcast:
                # the reply still comes from the old ID; a new ID/baud applies after it
                out += [(s, P.build_status(old_id, s.error_byte(err)))] if s.get("Status_Return_Level") == 2 else []
        return out

    def _reg_write(self, pkt, servos, by_id, target, broadcast, prm):
        if len(prm) < 3:
            return [] if broadcast else self._status(target, P.ERR_DATA_LENGTH)
        addr = prm[0] | prm[1] << 8
        data = bytes(prm[2:])
        out = []
        for s in (servos if broadcast else [target]):
            err = s.check_write(addr, data)
            if not err:
                s.registered = (addr, data)
                s.set("Registered_Instruction", 1)
            if not broadcast:
                out += self._status(s, err)
        return out

    def _action(self, pkt, servos, by_id, target, broadcast, prm):
        out = []
        for s in (servos if broadcast else [target]):
            err = 0
            if s.registered is None:
                err = P.ERR_RESULT_FAIL
            else:
                addr, data = s.registered
                s.registered = None
                s.set("Registered_Instruction", 0)
                err = s.write(addr, data)
            if not broadcast:
                out += self._status(s, err)
        return out

    def _reboot(self, pkt, servos, by_id, target, broadcast, prm):
        out = []
        for s in (servos if broadcast else [target]):
            if not broadcast:
                out += self._status(s, 0)
            s.reboot()
        return out

    def _factory_reset(self, pkt, servos, by_id, target, broadcast, prm):
        option = prm[0] if prm else 0xFF
        if option not in (0x01, 0x02, 0xFF):
            return [] if broadcast else self._status(target, P.ERR_DATA_RANGE)
        if broadcast:
            return []  # the firmware ignores a broadcast factory reset
        out = self._status(target, 0)
        target.factory_reset(option)
        return out

    def _clear(self, pkt, servos, by_id, target, broadcast, prm):
        if bytes(prm) != b"\x01\x44\x58\x4c\x22":
            return [] if broadcast else self._status(target, P.ERR_DATA_RANGE)
        out = []
        for s in (servos if broadcast else [target]):
            if s.motor.velocity != 0.0:
                err = P.ERR_RESULT_FAIL  # only while stopped
            else:
                err = 0
                s.clear_multi_turn()
            if not broadcast:
                out += self._status(s, err)
        return out

    def _sync_read(self, pkt, servos, by_id, target, broadcast, prm):
        if not broadcast or len(prm) < 5:
            return []
        addr, length = prm[0] | prm[1] << 8, prm[2] | prm[3] << 8
        out = []
        for sid in prm[4:]:
            s = by_id.get(sid)
            if s is not None:
                err, data = s.read(addr, length)
                out += self._status(s, err, data, read=True)
        return out

    def _fast_read(self, requests: list[tuple[EmulatedServo, int, int]]):
        """One combined status packet; each servo appends [error, id, data, running CRC]. Not stuffed."""
        total = sum(4 + n for _, _, n in requests)
        length = 1 + total
        buf = bytearray(P.HEADER + bytes((P.BROADCAST_ID, length & 0xFF, length >> 8, P.STATUS)))
        crc = P.crc16(buf)
        first = None
        for s, addr, n in requests:
            err, data = s.read(addr, n)
            data = data if len(data) == n else bytes(n)
            block = bytes((s.error_byte(err), s.id)) + data
            crc = P.crc16(block, crc)
            tail = bytes((crc & 0xFF, crc >> 8))
            buf += block + tail
            crc = P.crc16(tail, crc)  # the next block's CRC runs over everything sent before it
            first = first or s
        return [(first, bytes(buf))]

    def _chain(self, ids: list[int], by_id) -> Optional[list[EmulatedServo]]:
        chain = []
        for sid in ids:
            s = by_id.get(sid)
            if s is None or s.firmware < FAST_SYNC_READ_MIN_FIRMWARE or s.get("Status_Return_Level") == 0:
                break  # this servo does not answer: the chain (and the packet) ends early
            chain.append(s)
        return chain

    def _fast_sync_read(self, pkt, servos, by_id, target, broadcast, prm):
        if not broadcast or len(prm) < 5:
            return []
        addr, length = prm[0] | prm[1] << 8, prm[2] | prm[3] << 8
        ids = list(prm[4:])
        chain = self._chain(ids, by_id)
        if not chain:
            return []
        out = self._fast_read([(s, addr, length) for s in chain])
        if len(chain) < len(ids):
            # the first servo announced every block in the length field; the chain stopped at the silent one
            s, raw = out[0]
            full_len = 1 + len(ids) * (4 + length)
            out = [(s, raw[:5] + bytes((full_len & 0xFF, full_len >> 8)) + raw[7:])]
        return out

    def _bulk_requests(self, prm) -> list[tuple[int, int, int]]:
        reqs = []
        for i in range(0, len(prm) - 4, 5):
            reqs.append((prm[i], prm[i + 1] | prm[i + 2] << 8, prm[i + 3] | prm[i + 4] << 8))
        return reqs

    def _bulk_read(self, pkt, servos, by_id, target, broadcast, prm):
        if not broadcast or len(prm) % 5:
            return []
        out = []
        for sid, addr, n in self._bulk_requests(prm):
            s = by_id.get(sid)
            if s is not None:
                err, data = s.read(addr, n)
                out += self._status(s, err, data, read=True)
        return out

    def _fast_bulk_read(self, pkt, servos, by_id, target, broadcast, prm):
        if not broadcast or len(prm) % 5:
            return []
        reqs = self._bulk_requests(prm)
        chain = self._chain([r[0] for r in reqs], by_id)
        if len(chain) != len(reqs):
            return []
        return self._fast_read([(by_id[sid], addr, n) for sid, addr, n in reqs])

    def _sync_write(self, pkt, servos, by_id, target, broadcast, prm):
        if not broadcast or len(prm) < 4:
            return []
        addr, length = prm[0] | prm[1] << 8, prm[2] | prm[3] << 8
        body = prm[4:]
        step = 1 + length
        if length == 0 or len(body) % step:
            return []
        for i in range(0, len(body), step):
            s = by_id.get(body[i])
            if s is not None:
                s.write(addr, bytes(body[i + 1:i + step]))
        return []

    def _bulk_write(self, pkt, servos, by_id, target, broadcast, prm):
        if not broadcast:
            return []
        i = 0
        while i + 5 <= len(prm):
            sid, addr, n = prm[i], prm[i + 1] | prm[i + 2] << 8, prm[i + 3] | prm[i + 4] << 8
            data = bytes(prm[i + 5:i + 5 + n])
            i += 5 + n
            s = by_id.get(sid)
            if s is not None and len(data) == n:
                s.write(addr, data)
        return []


_HANDLERS = {
    P.PING: Emulator._ping,
    P.READ: Emulator._read,
    P.WRITE: Emulator._write,
    P.REG_WRITE: Emulator._reg_write,
    P.ACTION: Emulator._action,
    P.REBOOT: Emulator._reboot,
    P.FACTORY_RESET: Emulator._factory_reset,
    P.CLEAR: Emulator._clear,
    P.SYNC_READ: Emulator._sync_read,
    P.FAST_SYNC_READ: Emulator._fast_sync_read,
    P.BULK_READ: Emulator._bulk_read,
    P.FAST_BULK_READ: Emulator._fast_bulk_read,
    P.SYNC_WRITE: Emulator._sync_write,
    P.BULK_WRITE: Emulator._bulk_write,
}
