"""Private APIs under pinned ranges: the installed releases are the tested ones, and the code paths that rely on
their internals are the paths that actually run (a silent fallback would make the other tests prove nothing).

- dynamixel-sdk: our PortHandler/Protocol2PacketHandler subclasses (firmware_bridge/dynamixel/sdk_io.py) carry
  every packet, including the in-place byte stuffing dynamixel-sdk 4.1 gets wrong, and Fast Sync Read (0x8A)
  goes on the wire when every servo's firmware has it;
- atomics: the ring publishes through the package's C primitive (edgedp/runtime/ring.py AtomicU64 fast path).
"""
from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from dynamixel_sdk import PortHandler, Protocol2PacketHandler
from packaging.requirements import Requirement

from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
from firmware_bridge.dynamixel.emulator import Emulator
from firmware_bridge.dynamixel.models import FAST_SYNC_READ_MIN_FIRMWARE
from firmware_bridge.dynamixel.sdk_io import SdkPacketHandler, SdkPort

SETUP = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
INST_SYNC_READ, INST_FAST_SYNC_READ, INST_WRITE = 0x82, 0x8A, 0x03


@pytest.mark.parametrize("package", ["dynamixel-sdk", "atomics"])
def test_installed_release_is_inside_the_pinned_tested_range(package):
    spec = re.search(rf'"({re.escape(package)}[<>=!~][^"]*)"', SETUP)
    assert spec, f"setup.py does not pin {package}"
    req = Requirement(spec.group(1))
    assert any(op in str(req.specifier) for op in ("<", "==")), f"{package} has no upper bound: {req}"
    assert version(package) in req.specifier, f"{package} {version(package)} is outside the tested range {req}"


def _wire(bus) -> list[bytes]:
    """Record every packet the driver writes to the port (the instruction byte is packet[7])."""
    sent: list[bytes] = []
    original = bus.port.writePort

    def spy(packet):
        sent.append(bytes(packet))
        return original(packet)

    bus.port.writePort = spy
    return sent


def test_packets_go_through_our_sdk_subclasses_with_in_place_stuffing():
    with DynamixelBus(BusSpec("emulator", tick_budget_s=0.05), [JointSpec("a", 1, "xm430-w350")]) as bus:
        assert type(bus.ph) is SdkPacketHandler and type(bus.port) is SdkPort
        for name in ("addStuffing", "removeStuffing", "updateCRC"):
            assert getattr(type(bus.ph), name) is not getattr(Protocol2PacketHandler, name), name
        for name in ("readPort", "setPacketTimeout", "writePort"):
            assert getattr(type(bus.port), name) is not getattr(PortHandler, name), name
        sent = _wire(bus)
        bus._write(1, "Homing_Offset", -131073)  # FF FF FD FF: must be stuffed on the wire
        writes = [p for p in sent if p[7] == INST_WRITE]
        assert writes and b"\xff\xff\xfd\xfd" in writes[-1]  # the stuffed form went out, not FF FF FD
        assert bus.emulator.servo(1).get("Homing_Offset") == -131073 == bus._read(1, "Homing_Offset")


@pytest.mark.parametrize("firmware,mode,instruction", [
    (FAST_SYNC_READ_MIN_FIRMWARE, "auto", INST_FAST_SYNC_READ),
    (FAST_SYNC_READ_MIN_FIRMWARE - 1, "auto", INST_SYNC_READ),
    (FAST_SYNC_READ_MIN_FIRMWARE, "off", INST_SYNC_READ),
])
def test_the_sync_read_on_the_wire_is_the_one_selected(firmware, mode, instruction):
    with Emulator({1: "xm430-w350", 2: "xm430-w350"}, firmware={1: firmware, 2: firmware + 2}) as emu:
        js = [JointSpec("a", 1, "xm430-w350"), JointSpec("b", 2, "xm430-w350")]
        with DynamixelBus(BusSpec(emu.port_name, fast_sync_read=mode, tick_budget_s=0.05), js) as bus:
            assert bus.stats()["fast_sync_read"] is (instruction == INST_FAST_SYNC_READ)
            sent = _wire(bus)
            for _ in range(5):
                q = bus.read().q
            assert np.all(np.isfinite(q))
            reads = {p[7] for p in sent}
            assert reads == {instruction}, f"sent instructions {sorted(reads)}"


def test_ring_publishes_through_the_atomics_primitive():
    import atomics
    from atomics._impl.enums import OpType

    from edgedp.runtime.ring import ChunkRing

    with ChunkRing.create(2, 1) as ring:
        word = ring._pub
        assert word._fast, "the ring fell back to atomics' public API"
        core = word._view._core
        assert word._store_fp is core.get_op_func(OpType.STORE) and word._load_fp is core.get_op_func(OpType.LOAD)
        seen = []
        store = word._store_fp
        word._store_fp = lambda *a: (seen.append(a), store(*a))[1]
        ring.publish(np.zeros((2, 1)), t0=1.0, dt=0.1)
        # the publish word went out through the primitive, with at least release order (SC: release + Dekker)
        assert seen and seen[-1][2] in (atomics.MemoryOrder.RELEASE.value, atomics.MemoryOrder.SEQ_CST.value)
