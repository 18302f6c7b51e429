"""The driver addresses registers by name from the same control table the emulator enforces."""
from __future__ import annotations

import pytest

from firmware_bridge.dynamixel import bus as dxl_bus
from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
from firmware_bridge.dynamixel.control_table import X_TABLE, block


def test_blocks_and_addresses_are_the_e_manuals():
    # X-series e-Manual: Present Current 126 (2), Present Velocity 128 (4), Present Position 132 (4), Goal 116 (4)
    assert dxl_bus.FULL_BLOCK == (126, 10)
    assert dxl_bus.POSITION_BLOCK == (132, 4)
    assert dxl_bus.HEALTH_BLOCK == (144, 3)
    assert (X_TABLE["Goal_Position"].address, X_TABLE["Goal_Position"].size) == (116, 4)
    with pytest.raises(ValueError, match="comes before"):
        block("Present_Position", "Present_Current")


def test_named_reads_and_writes_match_the_emulated_servo():
    joints = [JointSpec("a", 1, "xm430-w350", max_velocity=2.0, max_acceleration=20.0),
              JointSpec("b", 2, "xl430-w250", operating_mode="extended_position")]
    with DynamixelBus(BusSpec("emulator", tick_budget_s=0.05), joints) as bus:
        for sid in (1, 2):
            servo = bus.emulator.servo(sid)
            for name in ("Firmware_Version", "Velocity_Limit", "Operating_Mode", "Return_Delay_Time",
                         "Profile_Velocity", "Profile_Acceleration", "Max_Position_Limit", "Homing_Offset"):
                assert bus._read(sid, name) == servo.get(name), (sid, name)
        assert bus.emulator.servo(2).get("Operating_Mode") == 4  # extended position, written by name
        assert bus.emulator.servo(1).get("Return_Delay_Time") == 0  # the 250 default set to 0 on connect
        bus._write(1, "Homing_Offset", -100)  # signed, 4 bytes: size and sign from the table
        assert bus.emulator.servo(1).get("Homing_Offset") == -100 == bus._read(1, "Homing_Offset")
