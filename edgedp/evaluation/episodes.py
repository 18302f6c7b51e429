"""Episodes of the simulated reach task run through the full runtime: the same assembly (edgedp/app.py) and
the same Runtime (servo loop, planner, telemetry) as `edgedp run`, with emulated servos and a virtual camera.

Devices stay up for the whole evaluation; the runtime restarts per episode. Starting the servo emulator
process costs about a second and the virtual RealSense cannot be re-plugged once closed, so a session
starts them once (`open`), and every episode then: resets the scene with the episode's seed (new target),
homes the arm over the bus (homing.py), starts a fresh Runtime (new rings, servo loop, planner thread and
camera driver: so planner state, latency history and joins never leak between episodes), stops it at the
first success or at the timeout, and reads its telemetry. The policy and its compiled sampler are built
once per session; injected latency and synchronous planning are per-run settings, so one session serves
a whole latency sweep.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from edgedp.config import RunConfig
from edgedp.errors import UserError, one_line
from edgedp.evaluation.homing import home_pose, move_home
from edgedp.evaluation.judge import CoverageJudge, SuccessJudge, nearest_target
from edgedp.runtime.lifecycle import EXIT_WATCHDOG, Runtime

INTERRUPTED = ("ctrl-c", "sigterm")


@dataclass(frozen=True)
class Condition:
    """What varies between runs of one session."""

    latency_ms: float = 0.0
    sync: bool = False

    @property
    def label(self) -> str:
        return f"{'sync' if self.sync else 'async'} +{self.latency_ms:g} ms"


@dataclass
class EpisodeResult:
    index: int
    seed: int
    success: bool
    time_to_success_s: Optional[float]
    final_distance_m: float
    min_distance_m: float
    chosen_target: Optional[int]  # target nearest to the tip at the end (which one a multimodal episode took)
    targets: list = field(default_factory=list)
    join_jump_position_rad: float = 0.0
    join_jump_velocity_rad_s: float = 0.0
    inpaint_fallbacks: int = 0  # inpaint joins that were cross-faded (the chunk came later than planned)
    chunks: int = 0
    dropped_steps: int = 0
    # servo ticks with no plan covering "now" (the arm braked and held): a plan that ran out, or a join that
    # started before its chunk was due; 0 in a healthy run
    uncovered_ticks: int = 0
    inference_ms_p50: Optional[float] = None
    e2e_latency_ms_p50: Optional[float] = None
    duration_s: float = 0.0
    stopped_by: str = ""
    max_coverage: Optional[float] = None  # Push-T: gym-pusht's coverage, the episode's maximum and at the stop
    final_coverage: Optional[float] = None


def _from_telemetry(tel: dict) -> dict[str, Any]:
    """The EpisodeResult fields every task reads from the episode's telemetry document (joins, chunks, timing)."""
    jj = tel["join_jump_max"]
    return dict(join_jump_position_rad=jj["position_rad"], join_jump_velocity_rad_s=jj["velocity_rad_s"],
                inpaint_fallbacks=tel["inpaint_fallbacks"], chunks=tel["chunks"], dropped_steps=tel["dropped_steps"],
                uncovered_ticks=tel["uncovered_ticks"],
                inference_ms_p50=tel["inference_ms"]["p50"], e2e_latency_ms_p50=tel["e2e_latency_ms"]["p50"],
                duration_s=tel["duration_s"], stopped_by=tel["stopped_by"])


@dataclass
class EpisodeError:
    """An episode that failed (a runtime or physics error): recorded, and the evaluation goes on with the next
    one, so one bad episode never loses the finished ones. The runtime's own shutdown (the safe stop) has already
    run when this is made: Runtime.run stops the arm in its ``finally`` before the error reaches the session."""

    index: int
    seed: int
    error: str  # one line: the exception's type and first line


def check_eval_config(cfg: RunConfig) -> None:
    """Evaluation needs the simulated world (something must judge success); say what is missing."""
    if cfg.robot.bus.port != "emulator":
        raise UserError(f"robot.bus.port: eval runs on the simulated arm and needs 'emulator' "
                        f"(got '{cfg.robot.bus.port}')")
    pusht = cfg.scene is not None and cfg.scene.task == "pusht"  # a state policy sees Push-T through keypoints
    if not pusht and not any(c.kind == "virtual" for c in cfg.cameras):
        raise UserError("cameras: eval needs a camera of kind 'virtual' (the policy must see the simulated target)")
    if cfg.scene is None or cfg.scene.task == "none":
        task = cfg.scene.task if cfg.scene is not None else None
        raise UserError(f"scene.task: eval needs a task with targets (allowed: reach, reach_multimodal, pusht; "
                        f"got {task!r})")


class _EpisodeRuntime(Runtime):
    """The ordinary Runtime, plus a success judge that starts with the planner and stops the run at success."""

    def __init__(self, parts: Any, duration: float, judge: SuccessJudge):
        super().__init__(parts, duration, None, plot=False, live=False, console=None)
        self.judge = judge
        judge.on_success = lambda: self.request_stop("success")

    def _supervise(self, *args) -> int:  # (..., t_begin): the Runtime's own arguments, passed through
        self.judge.start(args[-1])
        try:
            return super()._supervise(*args)
        finally:
            self.judge.stop()


class EvalSession:
    """One checkpoint/backend/precision: devices up once, any number of episodes under any conditions."""

    def __init__(self, cfg: RunConfig):
        from edgedp.app import build

        check_eval_config(cfg)
        self.cfg = cfg
        self.parts = build(cfg)  # validates everything (checkpoint, shapes, backend) before anything opens
        self.scene = self.parts.scene  # type: ignore[attr-defined]
        if self.scene is None:
            raise UserError("cameras: no virtual camera feeds the policy, so no simulated scene was built "
                            "(set the virtual camera's policy_key)")
        self.home = home_pose(cfg.robot.joints)
        self.max_velocity = [j.max_velocity for j in cfg.robot.joints]
        self.last_telemetry: Optional[Any] = None  # the last episode's Telemetry (servo timeline included)

    # ---- devices ---------------------------------------------------------------------------------------
    def open(self) -> "EvalSession":
        try:
            for start in self.parts.starters:
                start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for close in reversed(self.parts.closers):
            try:
                close()
            except Exception:
                pass

    def __enter__(self) -> "EvalSession":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- episodes --------------------------------------------------------------------------------------
    def run_episode(self, index: int, seed: int, condition: Condition, timeout: float,
                    dwell: float = 0.2) -> EpisodeResult:
        if getattr(self.scene, "task", None) == "pusht":
            return self._run_pusht_episode(index, seed, condition, timeout)
        self.scene.reset(seed)
        move_home(self.parts.make_bus, self.home, self.max_velocity)
        judge = SuccessJudge(self.scene, dwell=dwell)
        tel = self._run_runtime(index, seed, condition, timeout, judge)
        final = self.scene.distance_to_target()  # where the arm is held after the stop
        return EpisodeResult(
            index=index, seed=seed, success=judge.t_success is not None, time_to_success_s=judge.time_to_success,
            final_distance_m=final, min_distance_m=min(judge.min_distance, final),
            chosen_target=nearest_target(self.scene), targets=self.scene.targets.round(4).tolist(),
            **_from_telemetry(tel))

    def _run_pusht_episode(self, index: int, seed: int, condition: Condition, timeout: float) -> EpisodeResult:
        """Push-T: the pusher is homed (over the bus) to gym-pusht's start position for ``seed`` first, then the T
        is placed, so homing never pushes it; success is gym-pusht's coverage > 0.95 within ``timeout``."""
        move_home(self.parts.make_bus, self.scene.start_joint_pose(seed), self.max_velocity)
        self.scene.reset(seed)
        judge = CoverageJudge(self.scene)
        tel = self._run_runtime(index, seed, condition, timeout, judge)
        if self.scene.error is not None:
            raise RuntimeError(f"episode {index} (seed {seed}): the Push-T physics failed: {self.scene.error}")
        from edgedp.sim_task.pusht_expert import pose_error

        d, _ = pose_error(self.scene.block_pose(), self.scene.world.goal_pose)
        return EpisodeResult(
            index=index, seed=seed, success=judge.t_success is not None, time_to_success_s=judge.time_to_success,
            final_distance_m=d / 1000.0, min_distance_m=d / 1000.0, chosen_target=None, targets=[],
            max_coverage=round(judge.max_coverage, 4), final_coverage=round(self.scene.world.coverage(), 4),
            **_from_telemetry(tel))

    def _run_runtime(self, index: int, seed: int, condition: Condition, timeout: float, judge) -> dict:
        """A fresh Runtime for one episode, stopped by ``judge`` at success; its telemetry document."""
        parts = dataclasses.replace(self.parts, starters=[], closers=[],
                                    extra_latency=condition.latency_ms / 1000.0, sync=condition.sync)
        rt = _EpisodeRuntime(parts, timeout, judge)
        code = rt.run()
        self.last_telemetry = rt.tel
        tel = rt.tel.to_dict()
        if tel["stopped_by"] == "sigterm":  # the runtime caught it and stopped the arm; end the evaluation as
            from edgedp.cli import Terminated  # SIGTERM between episodes does (exit 143, not Ctrl-C's 130)

            raise Terminated()
        if tel["stopped_by"] in INTERRUPTED:
            raise KeyboardInterrupt
        if code == EXIT_WATCHDOG:  # the servo loop stopped the arm safely (bus timeouts): a failed episode,
            return tel             # counted in the results (stopped_by "watchdog"), not the end of the evaluation
        if code != 0:
            err = tel.get("servo_error") or "; ".join(tel.get("planner_errors") or []) or "; ".join(
                n for n in tel.get("notes", []) if n.startswith("runtime error")) or tel["stopped_by"]
            raise RuntimeError(f"episode {index} (seed {seed}): the runtime stopped with exit code {code}: {err}")
        return tel

    def run(self, condition: Condition, seeds: Iterable[int], timeout: float,
            progress: Optional[Callable[[Condition, EpisodeResult], None]] = None,
            dwell: float = 0.2, on_error: Optional[Callable[[Condition, EpisodeError], None]] = None,
            ) -> list[EpisodeResult]:
        """The finished episodes. Without ``on_error`` an episode's error ends the run (raised); with it, the
        failed episode is reported there and the run goes on with the next seed. Ctrl-C / SIGTERM always end it."""
        out = []
        for i, seed in enumerate(seeds):
            try:
                r = self.run_episode(i, int(seed), condition, timeout, dwell)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(condition, EpisodeError(i, int(seed), f"{type(exc).__name__}: {one_line(exc)}"))
                continue
            out.append(r)
            if progress is not None:
                progress(condition, r)
        return out

    @property
    def summary(self) -> dict:
        """What was evaluated (checkpoint, backend, precision, K, sampler, explicit timesteps, warm start, join ...),
        from the assembly's own summary; the sampler is the kind the built policy samples with (the checkpoint's
        when policy.sampler is unset), so a results file never says just "checkpoint"."""
        s = self.parts.config_summary
        out = {k: s.get(k) for k in ("checkpoint", "backend", "precision", "device", "steps", "horizon",
                                      "n_obs_steps", "n_action_steps", "action_period", "servo_hz", "join",
                                      "inpaint_form", "inpaint_overlap", "warm_start_level", "sampler",
                                      "timesteps")}
        spec = getattr(self.parts.policy, "scheduler_spec", None)
        if spec is not None and getattr(spec, "kind", None):
            out["sampler"] = spec.kind
        out["warm_start"] = out["warm_start_level"] is not None
        return out
