"""Protocol 2.0 framing used by the emulator, checked against the dynamixel-sdk's own implementation."""
from __future__ import annotations

import random

import dynamixel_sdk as sdk
import pytest

from firmware_bridge.dynamixel import protocol as P
from firmware_bridge.dynamixel.control_table import describe_error_field, hardware_error_names
from firmware_bridge.dynamixel.models import MODELS


def test_crc_matches_sdk_on_random_data():
    ph = sdk.PacketHandler(2.0)
    rng = random.Random(0)
    for n in (0, 1, 7, 64, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert P.crc16(data) == ph.updateCRC(0, list(data), n)


def test_crc_continues_a_running_value():
    data = b"\xff\xff\xfd\x00\x01\x07\x00\x02\x84\x00\x04\x00"
    assert P.crc16(data[5:], P.crc16(data[:5])) == P.crc16(data)


def test_ping_packet_matches_the_emanual_example():
    # e-Manual Protocol 2.0 PING example for ID 1: FF FF FD 00 01 03 00 01 19 4E
    assert P.build_packet(1, P.PING).hex() == "fffffd0001030001194e"


@pytest.mark.parametrize("body", [b"\x03\x14\x00\xff\xff\xfd\xff", b"\xff\xff\xfd\xfd", b"\x01\x02", b"\xff\xff\xfd" * 3])
def test_stuffing_round_trip(body):
    stuffed = P.stuff(body)
    assert b"\xff\xff\xfd" not in stuffed.replace(b"\xff\xff\xfd\xfd", b"")
    assert P.unstuff(stuffed) == body


def test_parser_resyncs_after_noise_and_reports_bad_crc():
    good = P.build_packet(3, P.WRITE, b"\x74\x00\xff\xff\xfd\xff")
    bad = bytearray(P.build_packet(4, P.READ, b"\x84\x00\x04\x00"))
    bad[-1] ^= 1
    parser = P.PacketParser()
    out = parser.feed(b"\x00\xff\xfd\x12" + good[:6])
    out += parser.feed(good[6:] + bytes(bad))
    assert [(p.id, p.instruction, p.crc_ok) for p in out] == [(3, P.WRITE, True), (4, P.READ, False)]
    assert out[0].params == b"\x74\x00\xff\xff\xfd\xff"


def test_model_numbers_and_names():
    numbers = {m.name: m.number for m in MODELS.values()}
    assert numbers["xm430-w350"] == 1020 and numbers["xl430-w250"] == 1060 and numbers["xl330-m288"] == 1200
    assert numbers["xl330-m077"] == 1190 and numbers["xm540-w270"] == 1120 and numbers["xc330-m288"] == 1240
    assert numbers["xh540-w270"] == 1100 and numbers["xh540-w150"] == 1110
    from edgedp.config import SERVO_MODELS

    assert set(SERVO_MODELS) == set(MODELS)


def test_error_names():
    assert hardware_error_names(0x24) == ["overheating", "overload"]
    assert hardware_error_names(0x19) == ["input voltage", "motor encoder", "electrical shock"]
    assert describe_error_field(0x87) == "access error, hardware alert"
