"""Glue for `edgedp run --record/--view`: build the planner listeners before anything starts, finish them after."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edgedp.errors import UserError


class Observers:
    def __init__(self, recorder=None, viewer=None, console=None):
        self.recorder = recorder
        self.viewer = viewer
        self.console = console

    def finish(self, servo_report: Optional[dict], code: int) -> int:
        """After the robot stopped: write the episode, close the view. A failure here is loud, not silent."""
        if self.viewer is not None:
            try:
                self.viewer.finish(servo_report)
            except Exception as exc:  # the run itself is over and safe; say so and keep its exit code
                self._say(f"[red]view: could not finish the rerun stream: {exc}[/]")
        if self.recorder is not None:
            from edgedp.datasets import DatasetError

            try:
                done = self.recorder.finish(servo_report)
            except (DatasetError, OSError) as exc:
                self._say(f"[red]record: episode NOT written: {exc}[/]")
                return code or 1
            if done is None:
                self._say(f"record: no chunk was planned; nothing written to {self.recorder.root}")
            else:
                parts = f" in {done['episodes']} parts" if done["episodes"] > 1 else ""
                self._say(f"record: {self.recorder.root}: episode {done['episode_index']} ({done['rows']} chunks{parts}, "
                          f"{done['dropped']} dropped), {done['total_episodes']} episode(s) in the dataset")
        return code

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)


def attach_observers(parts: Any, cfg: Any, config_path: str, record: Optional[Path], view: Optional[str],
                     console=None) -> Observers:
    """Checks happen here, before any port opens: a bad --record folder or --view target is one line, exit 2."""
    joints = [j.name for j in cfg.robot.joints]
    recorder = viewer = None
    if record is not None:
        from edgedp.datasets import DatasetError, require
        from edgedp.datasets.deploy import DeploymentRecorder

        try:
            require()
            recorder = DeploymentRecorder(
                record, parts.image_shapes, parts.state_key, joints, parts.policy.n_obs_steps, parts.policy.horizon,
                parts.action_period, task=f"edgedp run {Path(config_path).name}",
                settings={"robot_type": getattr(cfg.robot, "name", None) or "edgedp", "config": str(config_path),
                          "checkpoint": str(getattr(cfg.policy, "checkpoint", ""))},
                extra_state=_extra_state(parts))
        except DatasetError as exc:
            raise UserError(str(exc)) from None
        parts.chunk_listeners.append(recorder)
    if view is not None:
        from edgedp.view.rerun_view import RerunView

        try:
            viewer = RerunView(view, joints, list(parts.image_shapes), parts.state_key)
        except (RuntimeError, OSError) as exc:  # rerun: a .rrd that cannot be created, a malformed viewer URL
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip("'\"")
            raise UserError(f"--view {view}: {reason}") from None
        parts.chunk_listeners.append(viewer)
        if console is not None:
            console.print(f"view: {viewer.where}", highlight=False)
    return Observers(recorder, viewer, console)


def _extra_state(parts: Any) -> dict[str, int]:
    """Low-dim policy inputs besides the joint state (e.g. Push-T's observation.environment_state)."""
    spec = getattr(parts.policy, "spec", None)
    feats = getattr(spec, "state_features", None) or {}
    return {k: int(shape[0]) for k, shape in feats.items() if k != parts.state_key}
