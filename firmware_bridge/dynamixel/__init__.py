"""Dynamixel Protocol 2.0: the bus driver (on the official dynamixel-sdk) and a servo emulator on a pty."""
from firmware_bridge.dynamixel.errors import (BusConfigError, BusDisconnected, BusError, BusOpenError, BusTimeout,
                                              HardwareError, ServoStatusError)

__all__ = ["BusConfigError", "BusDisconnected", "BusError", "BusOpenError", "BusTimeout", "HardwareError",
           "ServoStatusError"]
