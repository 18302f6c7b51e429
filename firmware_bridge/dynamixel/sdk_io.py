"""The dynamixel-sdk's port and packet handler, adapted for a fixed-rate loop.

Why subclasses instead of the stock classes:
- the stock PortHandler busy-polls a non-blocking serial port and sizes every timeout for the U2D2's default
  16 ms latency timer (34 ms per missing packet). Here reads block in select() until bytes arrive or the
  packet's deadline passes (no CPU burnt while waiting), and the timeout is wire time + 2 x the adapter's
  real latency + a margin, so a dropped status packet costs about a tick, not 34 ms;
- a vanished port must raise (OSError), not read as silence: os.read returning b'' after select() said
  "readable" is how Linux reports an unplugged adapter or a closed pty;
- the stock packet handler rebuilds its 256-entry CRC table and a 1 KiB stuffing buffer on every packet; the
  overrides below compute the same bytes without that, which is most of the SDK's CPU time per cycle.
"""
from __future__ import annotations

import errno
import os
import select
import time

from dynamixel_sdk import PortHandler, Protocol2PacketHandler

from firmware_bridge.dynamixel.protocol import CRC_TABLE, stuff


class PortVanished(OSError):
    """The port returned end-of-file: the device is gone."""


class SdkPort(PortHandler):
    def __init__(self, port_name: str, latency_ms: float = 16.0, margin_ms: float = 2.0):
        super().__init__(port_name)
        self.latency_ms = latency_ms
        self.margin_ms = margin_ms
        self.fd = -1
        self._rx = bytearray()

    def setupPort(self, cflag_baud):
        ok = super().setupPort(cflag_baud)
        self.fd = self.ser.fileno()
        os.set_blocking(self.fd, False)  # pyserial opens it non-blocking already; make sure
        return ok

    def getCurrentTime(self):
        return time.perf_counter() * 1000.0

    def setPacketTimeout(self, packet_length):
        self.packet_start_time = time.perf_counter() * 1000.0
        self.packet_timeout = self.tx_time_per_byte * packet_length + 2.0 * self.latency_ms + self.margin_ms

    def readPort(self, length):
        # One read() takes everything already there (a whole sync read's answers, usually); the SDK's many
        # small reads are then served from this buffer without further system calls.
        buf = self._rx
        if len(buf) < length:
            if not buf:
                remaining = (self.packet_timeout - (time.perf_counter() * 1000.0 - self.packet_start_time)) / 1000.0
                ready, _, _ = select.select([self.fd], [], [], remaining if remaining > 0 else 0)
                if not ready:
                    return b""
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                data = None
            if data is not None:
                if not data:
                    raise PortVanished(errno.EIO, f"{self.port_name} returned no data although readable (device gone)")
                buf += data
        out = bytes(buf[:length])
        del buf[:length]
        return out

    def getBytesAvailable(self):
        return len(self._rx) + self.ser.in_waiting

    def writePort(self, packet):
        return os.write(self.fd, bytes(packet))

    def clearPort(self):
        self._rx.clear()
        try:
            self.ser.reset_input_buffer()
        except Exception as exc:  # termios.error on a vanished pty
            raise PortVanished(errno.EIO, f"{self.port_name}: {exc}") from None


class SdkPacketHandler(Protocol2PacketHandler):
    """Protocol2PacketHandler with the same results, computed without per-packet table/buffer rebuilding."""

    def updateCRC(self, crc_accum, data_blk_ptr, data_blk_size):
        table = CRC_TABLE
        for j in range(data_blk_size):
            crc_accum = ((crc_accum << 8) & 0xFFFF) ^ table[((crc_accum >> 8) ^ data_blk_ptr[j]) & 0xFF]
        return crc_accum

    def addStuffing(self, packet):
        # dynamixel-sdk 4.1's addStuffing builds the stuffed packet in a new list that txPacket never sees,
        # so packets whose data contain FF FF FD go out unstuffed. Stuff in place instead.
        n = (packet[5] | (packet[6] << 8)) - 2
        body = bytes(packet[7:7 + n])
        if b"\xff\xff\xfd" not in body:
            return packet
        stuffed = stuff(body)
        packet[7:7 + n] = list(stuffed)
        length = len(stuffed) + 2
        packet[5] = length & 0xFF
        packet[6] = length >> 8
        return packet

    def removeStuffing(self, packet):
        n = (packet[5] | (packet[6] << 8)) - 2
        if b"\xff\xff\xfd\xfd" not in bytes(packet[5:7 + n]):
            return packet
        return super().removeStuffing(packet)
