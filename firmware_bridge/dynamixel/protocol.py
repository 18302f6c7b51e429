"""Protocol 2.0 framing for the emulator: CRC-16 (IBM/ANSI, poly 0x8005), byte stuffing, packet build/parse.

The driver talks through the official dynamixel-sdk; this module is the servo side of the wire, written from
the protocol description so that the SDK is tested against an independent implementation.
Packet: FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAMS... | CRC_L CRC_H, LEN = len(INST+PARAMS+CRC),
CRC over everything before it (after stuffing). Stuffing inserts FD after every FF FF FD inside INST..PARAMS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE

# Instructions
PING = 0x01
READ = 0x02
WRITE = 0x03
REG_WRITE = 0x04
ACTION = 0x05
FACTORY_RESET = 0x06
REBOOT = 0x08
CLEAR = 0x10
STATUS = 0x55
SYNC_READ = 0x82
SYNC_WRITE = 0x83
FAST_SYNC_READ = 0x8A
BULK_READ = 0x92
BULK_WRITE = 0x93
FAST_BULK_READ = 0x9A

# Status error codes (low 7 bits of the error byte)
ERR_RESULT_FAIL = 1
ERR_INSTRUCTION = 2
ERR_CRC = 3
ERR_DATA_RANGE = 4
ERR_DATA_LENGTH = 5
ERR_DATA_LIMIT = 6
ERR_ACCESS = 7
ERR_ALERT = 0x80


def _make_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


CRC_TABLE = _make_table()


def crc16(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/BUYPASS as Protocol 2.0 uses it; `crc` continues a running value (Fast Sync Read blocks)."""
    table = CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after each FF FF FD in INST+PARAMS, so the header pattern never appears inside a packet."""
    if b"\xff\xff\xfd" not in body:
        return body
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        out.append(body[i])
        if i >= 2 and body[i] == 0xFD and body[i - 1] == 0xFF and body[i - 2] == 0xFF:
            out.append(0xFD)
        i += 1
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    """Remove the 0xFD inserted after each FF FF FD."""
    if b"\xff\xff\xfd\xfd" not in body:
        return body
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        out.append(body[i])
        if i + 1 < n and body[i] == 0xFD and i >= 2 and body[i - 1] == 0xFF and body[i - 2] == 0xFF and body[i + 1] == 0xFD:
            i += 1  # skip the stuffed byte
        i += 1
    return bytes(out)


def build_packet(dxl_id: int, instruction: int, params: bytes = b"", stuffing: bool = True) -> bytes:
    """A complete packet (instruction or status) with stuffing and CRC."""
    body = bytes((instruction,)) + bytes(params)
    if stuffing:
        body = stuff(body)
    length = len(body) + 2
    head = HEADER + bytes((dxl_id, length & 0xFF, length >> 8))
    pkt = head + body
    crc = crc16(pkt)
    return pkt + bytes((crc & 0xFF, crc >> 8))


def build_status(dxl_id: int, error: int, params: bytes = b"") -> bytes:
    """A status packet: INST=0x55, then the error byte, then the data."""
    return build_packet(dxl_id, STATUS, bytes((error,)) + bytes(params))


@dataclass
class Packet:
    id: int
    instruction: int
    params: bytes
    crc_ok: bool
    raw_length: int


class PacketParser:
    """Incremental parser: feed bytes as they arrive, collect complete packets (CRC checked, unstuffed)."""

    MAX_LENGTH = 1024

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        self.buf += data
        out: list[Packet] = []
        while True:
            pkt = self._next()
            if pkt is None:
                return out
            out.append(pkt)

    def _next(self) -> Optional[Packet]:
        buf = self.buf
        while True:
            i = buf.find(HEADER)
            if i < 0:
                # keep a possible partial header at the end
                keep = 3 if len(buf) >= 3 else len(buf)
                del buf[: len(buf) - keep]
                return None
            if i:
                del buf[:i]
            if len(buf) < 7:
                return None
            length = buf[5] | (buf[6] << 8)
            if length < 3 or length > self.MAX_LENGTH:
                del buf[:1]  # not a real header: resynchronise
                continue
            total = 7 + length
            if len(buf) < total:
                return None
            raw = bytes(buf[:total])
            del buf[:total]
            crc_ok = crc16(raw[:-2]) == (raw[-2] | (raw[-1] << 8))
            body = unstuff(raw[7:-2]) if crc_ok else raw[7:-2]
            return Packet(raw[4], body[0] if body else -1, body[1:], crc_ok, total)
