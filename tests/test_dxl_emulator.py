"""The real dynamixel-sdk against the emulator on a pty: every instruction, the error field, stuffing, broadcast."""
from __future__ import annotations

import time

import dynamixel_sdk as sdk
import pytest

from firmware_bridge.dynamixel import protocol as P
from firmware_bridge.dynamixel.emulator import Emulator, parse_servo_spec
from firmware_bridge.dynamixel.sdk_io import SdkPacketHandler

BAUD = 1_000_000


@pytest.fixture(autouse=True)
def patient_sdk(monkeypatch):
    """The SDK waits 2 x LATENCY_TIMER + 2 ms for a status packet; the emulated servos are threads on a CPU
    shared with other jobs, so give them 100 ms instead of 34 (tests check behaviour, not speed)."""
    import dynamixel_sdk.port_handler as ph_mod

    monkeypatch.setattr(ph_mod, "LATENCY_TIMER", 50)


@pytest.fixture
def emu():
    with Emulator({1: "xm430-w350", 2: "xm430-w350", 5: "xl330-m288"}, baud=BAUD, seed=1) as e:
        yield e


@pytest.fixture
def link(emu):
    port = sdk.PortHandler(emu.port_name)
    assert port.openPort() and port.setBaudRate(BAUD)
    yield port, sdk.PacketHandler(2.0)
    port.closePort()


def u32(v: int) -> int:
    return v & 0xFFFFFFFF


def s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def raw_exchange(port, packet: bytes, wait: float = 0.05) -> list[P.Packet]:
    """Send bytes the SDK would not send (bad CRC, unknown instruction) and parse what comes back."""
    port.clearPort()
    port.writePort(packet)
    time.sleep(wait)
    return P.PacketParser().feed(port.readPort(1024))


def test_ping_unicast_and_broadcast(link):
    port, ph = link
    assert ph.ping(port, 1) == (1020, sdk.COMM_SUCCESS, 0)
    assert ph.ping(port, 5)[0] == 1200
    assert ph.ping(port, 3)[1] == sdk.COMM_RX_TIMEOUT
    found, res = ph.broadcastPing(port)
    assert res == sdk.COMM_SUCCESS
    assert found == {1: [1020, 52], 2: [1020, 52], 5: [1200, 52]}


def test_factory_defaults_read_back(link):
    port, ph = link
    assert ph.read1ByteTxRx(port, 1, 9)[0] == 250  # Return Delay Time 500 us
    assert ph.read1ByteTxRx(port, 1, 11)[0] == 3  # position mode
    assert ph.read4ByteTxRx(port, 1, 44)[0] == 167  # XM430-W350 Velocity Limit
    assert ph.read2ByteTxRx(port, 5, 38)[0] == 1750  # XL330 Current Limit
    assert ph.read4ByteTxRx(port, 1, 132)[0] == 2048


def test_write_read_and_eeprom_access_error_with_torque_on(link):
    port, ph = link
    assert ph.write1ByteTxRx(port, 1, 9, 0) == (sdk.COMM_SUCCESS, 0)
    assert ph.read1ByteTxRx(port, 1, 9)[0] == 0
    assert ph.write1ByteTxRx(port, 1, 64, 1) == (sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 1, 11, 4) == (sdk.COMM_SUCCESS, P.ERR_ACCESS)  # EEPROM while torque on
    assert ph.read1ByteTxRx(port, 1, 11)[0] == 3  # refused write changed nothing
    assert ph.write1ByteTxRx(port, 1, 64, 0)[1] == 0
    assert ph.write1ByteTxRx(port, 1, 11, 4) == (sdk.COMM_SUCCESS, 0)
    assert ph.write2ByteTxRx(port, 1, 132, 5)[1] == P.ERR_ACCESS  # read-only
    assert ph.write2ByteTxRx(port, 1, 14, 5)[1] == P.ERR_ACCESS  # undefined address


def test_data_range_limit_and_length_errors(link):
    port, ph = link
    assert ph.write1ByteTxRx(port, 2, 8, 9)[1] == P.ERR_DATA_RANGE  # no baud code 9
    assert ph.write1ByteTxRx(port, 2, 11, 2)[1] == P.ERR_DATA_RANGE  # no operating mode 2
    assert ph.write4ByteTxRx(port, 2, 48, 3000)[1] == 0  # Max Position Limit
    assert ph.write1ByteTxRx(port, 2, 64, 1)[1] == 0
    assert ph.write4ByteTxRx(port, 2, 116, 3500)[1] == P.ERR_DATA_LIMIT  # beyond the position limit
    assert ph.write4ByteTxRx(port, 2, 112, 1000)[1] == P.ERR_DATA_LIMIT  # Profile Velocity > Velocity Limit
    assert ph.write2ByteTxRx(port, 2, 116, 100)[1] == P.ERR_DATA_LENGTH  # half a register


def test_instruction_and_crc_errors(link):
    port, _ = link
    out = raw_exchange(port, P.build_packet(1, 0x42, b""))
    assert [(p.id, p.params[0]) for p in out] == [(1, P.ERR_INSTRUCTION)]
    bad = bytearray(P.build_packet(2, P.READ, b"\x84\x00\x04\x00"))
    bad[-2] ^= 0xFF
    out = raw_exchange(port, bytes(bad))
    assert [(p.id, p.params[0]) for p in out] == [(2, P.ERR_CRC)]
    assert raw_exchange(port, P.build_packet(P.BROADCAST_ID, 0x42, b""), wait=0.02) == []  # broadcast: silence


def test_reg_write_then_action(link):
    port, ph = link
    assert ph.regWriteTxRx(port, 1, 65, 1, [1]) == (sdk.COMM_SUCCESS, 0)
    assert ph.read1ByteTxRx(port, 1, 69)[0] == 1  # Registered Instruction
    assert ph.read1ByteTxRx(port, 1, 65)[0] == 0  # not applied yet
    ph.action(port, sdk.BROADCAST_ID)
    time.sleep(0.02)
    assert ph.read1ByteTxRx(port, 1, 65)[0] == 1
    assert ph.read1ByteTxRx(port, 1, 69)[0] == 0


def test_reboot_keeps_eeprom_and_clears_ram_and_hardware_error(emu, link):
    port, ph = link
    ph.write1ByteTxRx(port, 1, 9, 7)
    ph.write1ByteTxRx(port, 1, 65, 1)
    emu.faults.set(hardware_error={1: 0x20})
    assert ph.read1ByteTxRx(port, 1, 70) == (0x20, sdk.COMM_SUCCESS, 0x80)  # alert bit in the error field
    assert ph.reboot(port, 1) == (sdk.COMM_SUCCESS, 0x80)  # answered before the reboot clears it
    assert ph.read1ByteTxRx(port, 1, 9)[0] == 7
    assert ph.read1ByteTxRx(port, 1, 65)[0] == 0
    assert ph.read1ByteTxRx(port, 1, 70) == (0, sdk.COMM_SUCCESS, 0)


def test_factory_reset_options(link):
    port, ph = link
    ph.write1ByteTxRx(port, 2, 9, 0)
    assert ph.factoryReset(port, 2, 0x02) == (sdk.COMM_SUCCESS, 0)  # keep id and baud
    assert ph.read1ByteTxRx(port, 2, 9)[0] == 250
    assert ph.factoryReset(port, 2, 0xFF)[0] == sdk.COMM_SUCCESS  # everything: id 1, 57600 baud
    time.sleep(0.01)
    assert ph.ping(port, 2)[1] == sdk.COMM_RX_TIMEOUT
    port.setBaudRate(57600)
    found, _ = ph.broadcastPing(port)
    assert found == {1: [1020, 52]}


def test_sync_read_and_sync_write(emu, link):
    port, ph = link
    for sid in (1, 2, 5):
        ph.write1ByteTxRx(port, sid, 64, 1)
    gsw = sdk.GroupSyncWrite(port, ph, 116, 4)
    goals = {1: 1000, 2: 3000, 5: 2100}
    for sid, g in goals.items():
        gsw.addParam(sid, list(g.to_bytes(4, "little")))
    assert gsw.txPacket() == sdk.COMM_SUCCESS
    time.sleep(0.02)
    gsr = sdk.GroupSyncRead(port, ph, 116, 4)
    for sid in goals:
        gsr.addParam(sid)
    assert gsr.txRxPacket() == sdk.COMM_SUCCESS
    assert {sid: gsr.getData(sid, 116, 4) for sid in goals} == goals


def test_bulk_read_and_bulk_write(link):
    port, ph = link
    gbw = sdk.GroupBulkWrite(port, ph)
    gbw.addParam(1, 65, 1, [1])
    gbw.addParam(2, 108, 4, list((50).to_bytes(4, "little")))
    assert gbw.txPacket() == sdk.COMM_SUCCESS
    time.sleep(0.02)
    gbr = sdk.GroupBulkRead(port, ph)
    gbr.addParam(1, 65, 1)
    gbr.addParam(2, 108, 4)
    gbr.addParam(5, 0, 2)
    assert gbr.txRxPacket() == sdk.COMM_SUCCESS
    assert gbr.getData(1, 65, 1) == 1 and gbr.getData(2, 108, 4) == 50 and gbr.getData(5, 0, 2) == 1200


def test_fast_sync_read_and_fast_bulk_read(emu, link):
    port, ph = link
    for sid, ticks in ((1, 100), (2, 4000), (5, 2222)):
        emu.servo(sid).set_external_position(ticks=ticks)
    gsr = sdk.GroupSyncRead(port, ph, 132, 4)
    for sid in (1, 2, 5):
        gsr.addParam(sid)
    assert gsr.fastSyncRead() == sdk.COMM_SUCCESS
    assert [gsr.getData(s, 132, 4) for s in (1, 2, 5)] == [100, 4000, 2222]
    gbr = sdk.GroupBulkRead(port, ph)
    gbr.addParam(1, 132, 4)
    gbr.addParam(5, 0, 2)
    assert gbr.fastBulkRead() == sdk.COMM_SUCCESS
    assert gbr.getData(1, 132, 4) == 100 and gbr.getData(5, 0, 2) == 1200


def test_fast_sync_read_unanswered_by_old_firmware():
    with Emulator("1:xm430-w350@44,2:xm430-w350@44", baud=BAUD) as emu:
        port = sdk.PortHandler(emu.port_name)
        assert port.openPort()
        port.setBaudRate(BAUD)
        ph = sdk.PacketHandler(2.0)
        gsr = sdk.GroupSyncRead(port, ph, 132, 4)
        gsr.addParam(1)
        gsr.addParam(2)
        assert gsr.fastSyncRead() == sdk.COMM_RX_TIMEOUT
        assert gsr.txRxPacket() == sdk.COMM_SUCCESS  # plain sync read works on any firmware
        port.closePort()
    with Emulator("1:xm430-w350@52,2:xm430-w350@44", baud=BAUD) as emu:  # the chain breaks at servo 2
        port = sdk.PortHandler(emu.port_name)
        assert port.openPort() and port.setBaudRate(BAUD)
        ph = sdk.PacketHandler(2.0)
        gsr = sdk.GroupSyncRead(port, ph, 132, 4)
        gsr.addParam(1)
        gsr.addParam(2)
        assert gsr.fastSyncRead() == sdk.COMM_RX_CORRUPT  # a packet that ends before its length says
        port.closePort()


def test_byte_stuffing_both_directions(emu, link):
    port, _ = link
    ph = SdkPacketHandler()  # stock 4.1 sends FF FF FD unstuffed (its addStuffing result is discarded)
    value = -131073  # little-endian FF FF FD FF: the header pattern inside the data
    assert ph.write4ByteTxRx(port, 1, 20, u32(value)) == (sdk.COMM_SUCCESS, 0)  # Homing Offset
    assert emu.servo(1).get("Homing_Offset") == value
    stock = sdk.PacketHandler(2.0)  # the status packet comes back stuffed; the SDK removes it
    data, res, err = stock.readTxRx(port, 1, 20, 4)
    assert (res, err, s32(int.from_bytes(bytes(data), "little"))) == (sdk.COMM_SUCCESS, 0, value)


def test_broadcast_write_changes_every_servo_without_reply(emu, link):
    port, ph = link
    assert ph.write1ByteTxRx(port, sdk.BROADCAST_ID, 65, 1)[0] == sdk.COMM_SUCCESS
    time.sleep(0.02)
    assert all(emu.servo(s).get("LED") == 1 for s in (1, 2, 5))
    assert port.getBytesAvailable() == 0


def test_status_return_level_and_return_delay(emu, link):
    port, ph = link
    ph.write1ByteTxRx(port, 1, 68, 1)  # answer reads and pings only
    assert ph.write1ByteTxRx(port, 1, 65, 1)[0] == sdk.COMM_RX_TIMEOUT
    assert ph.read1ByteTxRx(port, 1, 65)[:2] == (1, sdk.COMM_SUCCESS)
    ph.write1ByteTxRx(port, 2, 9, 254)  # 508 us return delay
    # When each reply is scheduled, relative to the instruction's arrival: read from the emulator's own bus
    # schedule, not from the wall clock (a slow machine can only make replies later, never show them early).
    delays = []
    real_send, real_sleep = emu._send, emu._sleep_until
    arrival = {}

    def send(packets, t_rx, instr_len):
        arrival["t"] = t_rx
        return real_send(packets, t_rx, instr_len)

    def sleep_until(t):
        delays.append(t - arrival["t"])
        real_sleep(t)

    emu._send, emu._sleep_until = send, sleep_until
    try:
        for _ in range(10):
            assert ph.ping(port, 2)[1] == sdk.COMM_SUCCESS
    finally:
        emu._send, emu._sleep_until = real_send, real_sleep
    # 1e-9 s of slack: the two instants are monotonic-clock floats, whose spacing at a day's uptime is ~1e-11 s
    assert len(delays) == 10 and min(delays) >= 254 * 2e-6 - 1e-9


def test_servo_at_another_baud_is_silent(emu, link):
    port, ph = link
    port.setBaudRate(57600)
    assert ph.ping(port, 1)[1] == sdk.COMM_RX_TIMEOUT
    port.setBaudRate(BAUD)
    assert ph.ping(port, 1)[1] == sdk.COMM_SUCCESS


def test_motor_follows_profile_and_reports_consistent_velocity(emu, link):
    port, ph = link
    ph.write4ByteTxRx(port, 1, 112, 100)  # 22.9 rpm = 2.4 rad/s
    ph.write4ByteTxRx(port, 1, 108, 0)
    ph.write1ByteTxRx(port, 1, 64, 1)
    ph.write4ByteTxRx(port, 1, 116, 4000)
    time.sleep(0.2)
    vel = s32(ph.read4ByteTxRx(port, 1, 128)[0])
    t1 = time.monotonic()
    p1 = ph.read4ByteTxRx(port, 1, 132)[0]
    time.sleep(0.1)
    t2 = time.monotonic()
    p2 = ph.read4ByteTxRx(port, 1, 132)[0]
    assert 95 <= vel <= 100  # cruising at the profile velocity
    ticks_per_s = (p2 - p1) / (t2 - t1)
    assert ticks_per_s == pytest.approx(100 * 0.229 / 60 * 4096, rel=0.25)
    assert ph.read2ByteTxRx(port, 1, 126)[0] != 0  # current flows while moving
    deadline = time.monotonic() + 5
    # Arrival and the Moving flag settle on the motor model's own ticks; poll both (no timing assumed).
    while (ph.read4ByteTxRx(port, 1, 132)[0] != 4000 or ph.read1ByteTxRx(port, 1, 122)[0] != 0) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ph.read4ByteTxRx(port, 1, 132)[0] == 4000
    assert ph.read1ByteTxRx(port, 1, 122)[0] == 0  # Moving cleared once it has arrived


def test_torque_off_joint_stays_and_can_be_moved_by_hand(emu, link):
    port, ph = link
    emu.servo(2).set_external_position(angle_rad=0.5)
    time.sleep(0.05)
    assert emu.present_positions_rad()[2] == pytest.approx(0.5, abs=2e-3)
    assert ph.read4ByteTxRx(port, 2, 132)[0] == round(2048 + 0.5 * 4096 / (2 * 3.141592653589793))
    ph.write1ByteTxRx(port, 2, 64, 1)
    with pytest.raises(RuntimeError):
        emu.servo(2).set_external_position(angle_rad=0.0)


def test_servo_spec_parsing():
    assert parse_servo_spec("1:xm430-w350, 2:XL330-M288@44") == {1: ("xm430-w350", None), 2: ("xl330-m288", 44)}
    for bad in ("1-xm430-w350", "1:xm999", "300:xm430-w350", "1:xm430-w350,1:xm430-w350", ""):
        with pytest.raises((ValueError, KeyError)):
            parse_servo_spec(bad)
