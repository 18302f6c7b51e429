"""A servo's motion: trapezoidal tracking of the goal under profile velocity/acceleration, integrated in time.

State is kept in the servo's physical frame (ticks of the output shaft, float); the emulator maps it to
Present_Position with Homing_Offset and Drive_Mode. Velocity and current follow from the same integration,
so Present_Velocity is the actual rate of change of Present_Position and Present_Current is proportional to
the torque needed (acceleration plus a little friction), as on a real servo under no load.
"""
from __future__ import annotations

import math

from firmware_bridge.dynamixel.models import RAD_S2_PER_ACCEL_UNIT, RAD_S_PER_VELOCITY_UNIT, ServoModel

TICKS_PER_RAD = 4096 / (2.0 * math.pi)
# Unlimited profile acceleration is capped here (rad/s^2): the motor's own limit under no load.
PHYSICAL_MAX_ACCEL = 200.0
STEP = 0.0005  # integration step, s


class MotorModel:
    def __init__(self, model: ServoModel, position_ticks: float = 2048.0):
        self.model = model
        self.position = float(position_ticks)  # physical ticks
        self.velocity = 0.0  # ticks/s
        self.accel = 0.0  # ticks/s^2, last step
        self.goal = float(position_ticks)
        self.torque = False
        self.profile_velocity = 0  # register units (0 = unlimited)
        self.profile_acceleration = 0
        self.t = None  # time of the last update

    def limits(self) -> tuple[float, float]:
        """(max speed ticks/s, max accel ticks/s^2) from the profile, capped by the physical motor."""
        vmax = self.model.max_speed_rad_s
        if self.profile_velocity > 0:
            vmax = min(vmax, self.profile_velocity * RAD_S_PER_VELOCITY_UNIT)
        amax = PHYSICAL_MAX_ACCEL
        if self.profile_acceleration > 0:
            amax = min(amax, self.profile_acceleration * RAD_S2_PER_ACCEL_UNIT)
        return vmax * TICKS_PER_RAD, amax * TICKS_PER_RAD

    def advance(self, now: float) -> None:
        """Integrate from the last update to `now` (called lazily whenever the state is looked at)."""
        if self.t is None:
            self.t = now
            return
        dt_total = now - self.t
        self.t = now
        if dt_total <= 0:
            return
        if not self.torque:
            self.velocity = 0.0
            self.accel = 0.0
            return
        vmax, amax = self.limits()
        p, v, g = self.position, self.velocity, self.goal
        remaining = min(dt_total, 5.0)  # a long pause: 5 s is enough to settle any move
        a = 0.0
        while remaining > 0:
            dt = STEP if remaining > STEP else remaining
            remaining -= dt
            e = g - p
            if abs(e) < 0.5 and abs(v) < amax * dt:
                p, v, a = g, 0.0, 0.0
                continue
            # velocity that can still stop at the goal, capped by the profile speed
            v_des = math.copysign(min(vmax, math.sqrt(2.0 * amax * abs(e))), e)
            dv = v_des - v
            step = amax * dt
            if dv > step:
                dv = step
            elif dv < -step:
                dv = -step
            a = dv / dt
            v_new = v + dv
            p_new = p + 0.5 * (v + v_new) * dt
            if (g - p) * (g - p_new) < 0 and abs(v_new) <= 2 * step:
                p_new, v_new = g, 0.0
            p, v = p_new, v_new
        self.position, self.velocity, self.accel = p, v, a

    def current_a(self) -> float:
        """Motor current (A) consistent with the motion: inertia term plus viscous/coulomb friction."""
        stall = self.model.stall_current_a
        amax_phys = PHYSICAL_MAX_ACCEL * TICKS_PER_RAD
        vmax_phys = self.model.max_speed_rad_s * TICKS_PER_RAD
        i = 0.5 * stall * (self.accel / amax_phys)
        if self.velocity != 0.0:
            i += math.copysign(0.03 * stall, self.velocity) + 0.05 * stall * (self.velocity / vmax_phys)
        return i if self.torque else 0.0
