"""Push-T on emulated servos: gym-pusht's own physics, rendering and coverage metric, its pusher carried by a
two-axis gantry whose carriages are driven by Dynamixel servos through pulleys.

Why a gantry: it is the simplest mechanism whose joint angles map to the pusher's table position one to one
(x = centre + r·q₀, y = centre + r·q₁ with pulley radius r), so the policy's actions stay joint targets in
radians like on every other edgedp robot, and nothing but the servos' motor model decides where the pusher is.

The table is gym-pusht's 512 × 512 units; one unit is taken as one millimetre (the table is 0.512 m wide).

- :class:`Gantry` converts joint angles ↔ table positions.
- :class:`PushTWorld` owns one ``gym_pusht`` ``PushTEnv``: its pymunk space (walls, T, kinematic pusher), its
  drawing and its ``_get_coverage`` — only the agent's PD controller is replaced, by "the pusher is where the
  carriages are" (the kinematic body is given the velocity that lands it there in one physics step). It steps
  synchronously: the recorder and the expert's planner use it directly.
- :class:`PushTScene` runs a world in real time on its own thread (gym-pusht's 100 Hz physics step), reading
  the pusher position from the emulated servos at every step, and judges coverage at gym-pusht's 10 Hz
  control rate; the virtual RealSense renders it, :class:`KeypointSensor` publishes the T's keypoints for
  state-based policies.

gym-pusht is an optional dependency (``pip install 'edgedp[pusht]'``); importing this module without it
raises ImportError with that line.
"""
from __future__ import annotations

import threading
import time
import warnings
from typing import Callable, Optional

import numpy as np

from firmware_bridge.newest_frame import NewestFrameWaiter
from firmware_bridge.types import Frame, Intrinsics

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pygame's pkg_resources deprecation notice on import
        from gym_pusht.envs.pusht import PushTEnv, pymunk_to_shapely
    from shapely.errors import GEOSException
    from shapely.ops import unary_union
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"Push-T needs gym-pusht ({exc}): pip install 'edgedp[pusht]'") from None

TABLE = 512.0  # gym-pusht table side, units (= mm here)
CENTRE = TABLE / 2
MM = 1000.0  # table units per metre
PHYSICS_DT = 0.01  # gym-pusht's physics step (s)
CONTROL_PERIOD = 0.1  # gym-pusht's control period (10 Hz): coverage and success are judged at this rate
SUCCESS_COVERAGE = 0.95  # gym-pusht's success_threshold
MAX_STEPS = 300  # gym-pusht episodes (LeRobot's eval): 300 control steps = 30 s
PUSHER_RADIUS = 15.0  # gym-pusht's agent circle
KEYPOINT_KEY = "observation.environment_state"  # gym-pusht / LeRobot name of the 16 keypoint coordinates


class Gantry:
    """Two carriages on belts over pulleys of radius ``pulley_radius`` metres: joint angle ↔ table position."""

    def __init__(self, pulley_radius: float = 0.1):
        if not pulley_radius > 0:
            raise ValueError(f"pulley radius must be positive metres, got {pulley_radius}")
        self.r_units = float(pulley_radius) * MM  # table units per radian

    def to_table(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.size != 2:
            raise ValueError(f"the Push-T gantry has 2 joints, got {q.size} angles")
        return CENTRE + self.r_units * q

    def to_joints(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64).reshape(2) - CENTRE) / self.r_units


def start_state(seed: int) -> np.ndarray:
    """gym-pusht's start state for ``seed``: [pusher x, y, T x, y, angle] exactly as ``env.reset(seed)`` draws it."""
    env = PushTEnv(obs_type="state")
    env.reset(seed=int(seed))
    state = np.array([*env.agent.position, *env.block.position, env.block.angle], dtype=np.float64)
    env.close()
    return state


class PushTWorld:
    """gym-pusht's simulation with the pusher placed, not PD-controlled: ``move_pusher(xy)`` per physics step."""

    def __init__(self, width: int = 96, height: int = 96):
        self.env = PushTEnv(obs_type="state", render_mode="rgb_array", observation_width=int(width),
                            observation_height=int(height))
        self.env.reset(seed=0)
        self.physics_steps = 0

    def reset(self, seed: int, pusher: Optional[np.ndarray] = None) -> None:
        """The T where gym-pusht's reset(seed) puts it; the pusher there too unless ``pusher`` says where it is."""
        self.env.reset(seed=int(seed))
        if pusher is not None:
            self.env.agent.position = tuple(float(v) for v in pusher)
            self.env.agent.velocity = (0.0, 0.0)
        self.physics_steps = 0

    def count_contacts(self, on: bool) -> None:
        """gym-pusht counts contact points after every step (its info's n_contacts); a planner needs no count."""
        env = self.env
        env.collision_handeler.post_solve = env._handle_collision if on else (lambda arbiter, space, data: None)

    def set_state(self, pusher: np.ndarray, block: np.ndarray) -> None:
        """Teleport (planning): pusher (x, y), T (x, y, angle); no physics step."""
        self.env.agent.position = (float(pusher[0]), float(pusher[1]))
        self.env.agent.velocity = (0.0, 0.0)
        # Angle first: pymunk turns a body about its centre of gravity, which moves the position the T reports
        # (gym-pusht's own _set_state does the opposite for its legacy start states, not for copying a pose).
        self.env.block.angle = float(block[2])
        self.env.block.position = (float(block[0]), float(block[1]))
        self.env.block.velocity = (0.0, 0.0)
        self.env.block.angular_velocity = 0.0

    def move_pusher(self, xy: np.ndarray, dt: float = PHYSICS_DT) -> None:
        """One physics step in which the kinematic pusher travels to ``xy`` (contacts push the T on the way)."""
        agent = self.env.agent
        x, y = float(xy[0]), float(xy[1])
        px, py = agent.position
        agent.velocity = ((x - px) / dt, (y - py) / dt)
        self.env.space.step(dt)
        agent.position = (x, y)  # exact (removes integration round-off)
        agent.velocity = (0.0, 0.0)
        self.physics_steps += 1

    # -- what gym-pusht measures and shows --------------------------------------------------------
    def coverage(self) -> float:
        """gym-pusht's own coverage: area of T ∩ goal T over the goal's area.

        gym-pusht builds each T as a MultiPolygon of its two boxes, which share an edge, so GEOS sees invalid
        geometry; some GEOS builds (shapely 2.1 / GEOS 3.13, what Python 3.10 installs) then throw a
        TopologyException on rare poses, mid-episode. There the same area is measured on the union of the boxes
        (valid, same area), rather than ending the episode with an error."""
        try:
            return float(self.env._get_coverage())
        except GEOSException:
            return self.coverage_of_united_shapes()

    def coverage_of_united_shapes(self) -> float:
        """Coverage as gym-pusht defines it, with each T's two boxes united into one valid polygon first."""
        env = self.env
        goal = unary_union(list(pymunk_to_shapely(env.get_goal_pose_body(env.goal_pose), env.block.shapes).geoms))
        block = unary_union(list(pymunk_to_shapely(env.block, env.block.shapes).geoms))
        return float(goal.intersection(block).area / goal.area)

    def keypoints(self) -> np.ndarray:
        """gym-pusht's 8 keypoints of the T, flattened to 16 values (its ``environment_state``)."""
        return self.env.get_keypoints(self.env._block_shapes).reshape(-1).astype(np.float64)

    def pusher(self) -> np.ndarray:
        return np.array(self.env.agent.position, dtype=np.float64)

    def block_pose(self) -> np.ndarray:
        b = self.env.block
        return np.array([b.position[0], b.position[1], b.angle], dtype=np.float64)

    @property
    def goal_pose(self) -> np.ndarray:
        return np.asarray(self.env.goal_pose, dtype=np.float64)

    def render(self) -> np.ndarray:
        """gym-pusht's observation image (observation_width × height RGB uint8)."""
        return self.env._render(visualize=False)

    def close(self) -> None:
        self.env.close()


class PushTScene:
    """A Push-T world stepped in real time, its pusher wherever the emulated servos are.

    ``joint_angles()`` returns the gantry's present joint angles (radians; the runtime wires it to the servo
    emulator's motor model). The physics thread runs gym-pusht's 10 ms step on an absolute schedule; each step
    reads the servos and moves the pusher there. Every 10th step (gym-pusht's 10 Hz control rate) it measures
    coverage and keeps the episode's maximum and the time it first exceeded 0.95 (gym-pusht's success).
    """

    task = "pusht"

    def __init__(self, joint_angles: Callable[[], np.ndarray], pulley_radius: float = 0.1, width: int = 96,
                 height: int = 96, seed: int = 0, clock: Callable[[], float] = time.monotonic):
        self.joint_angles = joint_angles
        self.gantry = Gantry(pulley_radius)
        self.world = PushTWorld(width, height)
        self.width, self.height = int(width), int(height)
        self.seed = int(seed)
        self.episode = 0
        self.clock = clock
        self._lock = threading.Lock()  # physics thread vs camera / sensor / judge threads
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.late_steps = 0  # physics steps run late (behind the real-time schedule by more than one step)
        self.error: Optional[BaseException] = None
        self._reset_metrics()
        self.reset(seed)

    # -- episodes ---------------------------------------------------------------------------------
    def start_joint_pose(self, seed: Optional[int] = None) -> np.ndarray:
        """Joint angles that put the pusher at gym-pusht's start position for ``seed`` (evaluations home there)."""
        return self.gantry.to_joints(start_state(self.seed + self.episode + 1 if seed is None else seed)[:2])

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        """Put the T where gym-pusht's reset(seed) does; the pusher stays where the servos hold it. Returns the
        T's pose (x, y, angle)."""
        self._restart_after_error()
        if seed is None:
            self.episode += 1
            seed = self.seed + self.episode
        with self._lock:
            self.world.reset(int(seed), pusher=self.gantry.to_table(self.joint_angles()))
            self.current_seed = int(seed)
            self._reset_metrics()
            return self.world.block_pose()

    def _restart_after_error(self) -> None:
        """A physics error ends its own episode (the eval's error row), not every later one: the next episode
        starts with the error cleared and, if the physics was running, a fresh physics thread."""
        if self.error is None:
            return
        was_running = self._thread is not None
        self.stop()
        self.error = None
        if was_running:
            self.start()

    def _reset_metrics(self) -> None:
        self._coverage = 0.0
        self.max_coverage = 0.0
        self.control_steps = 0
        self.success_step: Optional[int] = None  # first control step with coverage > 0.95
        self.success_time: Optional[float] = None  # clock() at that step

    # -- the physics thread -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pusht-physics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _run(self) -> None:
        next_t = self.clock() + PHYSICS_DT
        while not self._stop.is_set():
            delay = next_t - self.clock()
            if delay > 0 and self._stop.wait(delay):
                break
            if self.clock() - next_t > PHYSICS_DT:
                self.late_steps += 1
            next_t += PHYSICS_DT
            try:
                self.step()
            except Exception as exc:  # the camera and judge see it through .error
                self.error = exc
                return

    def step(self) -> None:
        """One physics step with the pusher at the servos' present position (and coverage every 10th)."""
        target = self.gantry.to_table(self.joint_angles())
        with self._lock:
            self.world.move_pusher(target)
            if self.world.physics_steps % round(CONTROL_PERIOD / PHYSICS_DT) == 0:
                self._measure()

    def _measure(self) -> None:
        cov = self.world.coverage()
        self._coverage = cov
        self.control_steps += 1
        self.max_coverage = max(self.max_coverage, cov)
        if cov > SUCCESS_COVERAGE and self.success_step is None:
            self.success_step = self.control_steps
            self.success_time = self.clock()

    # -- what the judge, the camera and the sensor read ---------------------------------------------
    def coverage(self) -> float:
        """Coverage at the last 10 Hz control step."""
        if self.error is not None:
            raise RuntimeError(f"Push-T physics stopped: {type(self.error).__name__}: {self.error}")
        return self._coverage

    def success(self) -> bool:
        return self.success_step is not None

    def keypoints(self) -> np.ndarray:
        with self._lock:
            return self.world.keypoints()

    def pusher(self) -> np.ndarray:
        with self._lock:
            return self.world.pusher()

    def block_pose(self) -> np.ndarray:
        with self._lock:
            return self.world.block_pose()

    @property
    def intrinsics(self) -> Intrinsics:
        """A top-down pinhole over the table, looking down from 1 m (for the virtual RealSense's metadata)."""
        f = self.width * 1.0 / (TABLE / MM)  # pixels per metre at 1 m distance
        return Intrinsics(width=self.width, height=self.height, fx=f, fy=f * self.height / self.width,
                          cx=self.width / 2, cy=self.height / 2)

    def render(self, t: float = 0.0) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """gym-pusht's own 96 × 96 observation image of the table now (no depth)."""
        if self.error is not None:
            raise RuntimeError(f"Push-T physics stopped: {type(self.error).__name__}: {self.error}")
        with self._lock:
            return self.world.render(), None


class KeypointSensor(NewestFrameWaiter):
    """The T's 16 keypoint coordinates at ``fps``, behind the Camera protocol (``Frame.image`` is the (16,)
    float32 vector): what a motion-capture system would give a state-based policy on a real table."""

    def __init__(self, scene: PushTScene, fps: int = 30, name: str = "keypoints",
                 clock: Callable[[], float] = time.monotonic):
        if fps <= 0:
            raise ValueError(f"sensor '{name}': fps must be positive, got {fps}")
        self.scene = scene
        self.fps = int(fps)
        self.name = name
        self.clock = clock
        self.frames = 0
        self._latest: Optional[Frame] = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._produce()
        self._thread = threading.Thread(target=self._run, name=f"sensor-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.fps
        while not self._stop.wait(period):
            self._produce()

    def _produce(self) -> None:
        t = self.clock()
        kp = self.scene.keypoints().astype(np.float32)
        with self._cond:
            self.frames += 1
            self._latest = Frame(image=kp, depth=None, t=t, seq=self.frames)
            self._cond.notify_all()

    def latest(self) -> Optional[Frame]:
        return self._latest

    def _no_more_frames(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._cond:
            self._cond.notify_all()

    def counters(self) -> dict:
        return {"frames": self.frames, "drops": 0, "reconnects": 0, "reconnect_attempts": 0, "timeouts": 0,
                "unmatched": 0, "source": "Push-T keypoints (scene)"}
