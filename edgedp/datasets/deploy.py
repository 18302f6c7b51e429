"""`edgedp run --record DIR`: one LeRobot v3.0 episode per run, with what the policy saw, planned and executed.

The planner hands every published chunk to :meth:`DeploymentRecorder.__call__` (a queue put, nothing else, on
the planner thread; the servo loop is not touched). A recorder thread turns chunks into rows; at the end of
the run the servo loop's command timeline is added and the episode is written in one crash-safe commit.

One row per planned chunk (the policy's decision points):
- ``<obs key>``: the newest sample of each observation feature exactly as fed to the encoder (images after
  resizing to the policy's size), ``<obs key>.prev<k>``: the sample k action periods earlier in the window;
- ``action``: the chunk's first executed action (for the observation's time), ``action.chunk``: the whole
  predicted chunk (horizon x joints, flattened, raw units);
- ``chunk.seq``, ``chunk.t_obs``, ``chunk.t0``, ``chunk.t_plan_start``, ``chunk.t_publish``: host monotonic
  seconds (what the servo loop timed the chunk by) minus the first observation's (kept in the episode row as
  ``t_zero_monotonic_s``), ``chunk.first``/``chunk.executed``: the executed slice.
LeRobot's ``timestamp`` column is the row's place on the video clock (frame_index / fps, fps = 1 / action
period), not wall time: the real times are the chunk.* columns. The servo loop's commands (safety-filtered
goal positions), measured positions and plan targets at the telemetry rate go to
``edgedp/servo/episode_XXXXXX.parquet``.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgedp.datasets import DatasetError, check_creatable


def prev_key(key: str, k: int) -> str:
    return f"{key}.prev{k}"


class DeploymentRecorder:
    """Collects a run's chunks on its own thread; :meth:`finish` writes them as one episode."""

    def __init__(self, root: str | Path, image_shapes: dict[str, tuple[int, int, int]], state_key: str,
                 joint_names: list[str], n_obs_steps: int, horizon: int, action_period: float, task: str,
                 settings: Optional[dict] = None, max_queue: int = 256, max_rows: int = 300,
                 extra_state: Optional[dict[str, int]] = None):
        fps = 1.0 / action_period
        if abs(fps - round(fps)) > 1e-6:
            raise DatasetError(f"--record: the action period {action_period} s is not 1/whole-number; LeRobot "
                               f"datasets store an integer fps")
        self.root = Path(root)
        self.fps = int(round(fps))
        self.image_shapes = image_shapes
        self.state_key = state_key
        self.joints = list(joint_names)
        self.n_obs = int(n_obs_steps)
        self.horizon = int(horizon)
        self.task = task
        self.settings = settings or {}
        self.extra_state = dict(extra_state or {})  # other low-dim policy inputs (Push-T keypoints): key -> size
        self.features = self._features()
        self._check_target()
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max_queue)
        self.rows: list[dict[str, np.ndarray]] = []
        self.error: Optional[BaseException] = None
        self.dropped = 0
        self.max_rows = int(max_rows)  # memory bound: a long run is written as consecutive episodes of this many rows
        self.parts: list[dict] = []
        self.t_zero: Optional[float] = None  # the first observation's host time: row times are relative to it
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _features(self) -> dict[str, dict]:
        j = len(self.joints)
        feats: dict[str, dict] = {}
        for key, (_, h, w) in self.image_shapes.items():
            for k in range(self.n_obs):
                feats[key if k == 0 else prev_key(key, k)] = {
                    "dtype": "video", "shape": [int(h), int(w), 3], "names": ["height", "width", "channels"]}
        for k in range(self.n_obs):
            feats[self.state_key if k == 0 else prev_key(self.state_key, k)] = {
                "dtype": "float32", "shape": [j], "names": self.joints}
        for key, size in self.extra_state.items():
            for k in range(self.n_obs):
                feats[key if k == 0 else prev_key(key, k)] = {"dtype": "float32", "shape": [int(size)], "names": None}
        feats["action"] = {"dtype": "float32", "shape": [j], "names": self.joints}
        feats["action.chunk"] = {"dtype": "float32", "shape": [self.horizon * j],
                                 "names": [f"{s}.{n}" for s in range(self.horizon) for n in self.joints]}
        for name in ("t_obs", "t0", "t_plan_start", "t_publish"):
            feats[f"chunk.{name}"] = {"dtype": "float64", "shape": [1], "names": None}
        for name in ("seq", "first", "executed"):
            feats[f"chunk.{name}"] = {"dtype": "int64", "shape": [1], "names": None}
        return feats

    def _check_target(self) -> None:
        """Before the robot moves: a new folder, or a dataset these rows can be appended to."""
        info = self.root / "meta" / "info.json"
        if info.exists():
            import json

            from edgedp.datasets.schema import DEFAULT_FEATURES

            have = json.loads(info.read_text()).get("features", {})
            mine = {k: (v["dtype"], list(v["shape"])) for k, v in self.features.items()}
            theirs = {k: (v["dtype"], list(v["shape"])) for k, v in have.items() if k not in DEFAULT_FEATURES}
            if mine != theirs:
                raise DatasetError(f"--record {self.root}: a dataset with other features (another policy or "
                                   f"config); record to a new folder")
        elif self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"--record {self.root}: is a file (give a folder for the run log)")
        elif self.root.exists() and any(self.root.iterdir()):
            raise DatasetError(f"--record {self.root}: exists and is not a dataset (choose a new folder)")
        else:
            check_creatable(self.root, "--record")

    # ---- planner thread -------------------------------------------------------------------------
    def __call__(self, event) -> None:
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    # ---- recorder thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            event = self._q.get()
            if event is None:
                return
            self.rows.append(self._row(event))
            if len(self.rows) >= self.max_rows:
                try:
                    self._write_part(None)
                except Exception as exc:  # keep collecting; finish() reports the failure
                    self.error = exc
                    self.rows = []

    def _row(self, ev) -> dict[str, np.ndarray]:
        row: dict[str, Any] = {}
        for key in list(self.image_shapes) + [self.state_key] + list(self.extra_state):
            window = np.asarray(ev.obs[key])
            for k in range(self.n_obs):
                row[key if k == 0 else prev_key(key, k)] = window[self.n_obs - 1 - k]
        actions = np.asarray(ev.actions, dtype=np.float32)
        row["action"] = actions[ev.first]
        row["action.chunk"] = actions.reshape(-1)
        if self.t_zero is None:
            self.t_zero = float(ev.t_obs)
        z = self.t_zero  # relative seconds: LeRobot hands float columns out as float32 (fine for hours, not for
        # the ~1e5 s of a monotonic clock)
        row.update({"chunk.t_obs": ev.t_obs - z, "chunk.t0": ev.t0 - z, "chunk.t_plan_start": ev.t_plan_start - z,
                    "chunk.t_publish": ev.t_publish - z, "chunk.seq": ev.seq, "chunk.first": ev.first,
                    "chunk.executed": ev.executed})
        return row

    def finish(self, servo_report: Optional[dict]) -> Optional[dict]:
        """Stop collecting and write the (last) episode; None when no chunk was planned. Runs after the robot
        stopped; the servo timeline goes with the last episode of the run."""
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise DatasetError(f"--record {self.root}: writing a part of the run failed: {self.error}")
        if self.rows:
            self._write_part(servo_report)
        if not self.parts:
            return None
        last = self.parts[-1]
        return {"episode_index": last["episode_index"], "rows": sum(p["rows"] for p in self.parts),
                "dropped": self.dropped, "total_episodes": last["total_episodes"], "episodes": len(self.parts)}

    def _write_part(self, servo_report: Optional[dict]) -> None:
        from edgedp.datasets.writer import DatasetWriter

        frames = {k: np.stack([r[k] for r in self.rows]) for k in self.features}
        if (self.root / "meta" / "info.json").exists():
            writer = DatasetWriter.open_for_append(self.root)
        else:
            writer = DatasetWriter.create(self.root, self.fps, self.features, robot_type=self.settings.get("robot_type"),
                                          extra={k: v for k, v in self.settings.items() if k != "robot_type"})
        attachments = {"servo": servo_table(servo_report, self.joints, self.t_zero)} if servo_report else None
        row = writer.add_episode(frames, self.task, extra={"chunks": len(self.rows), "dropped_chunks": self.dropped,
                                                           "t_zero_monotonic_s": self.t_zero, "part": len(self.parts)},
                                 attachments=attachments)
        self.parts.append({"episode_index": row["episode_index"], "rows": len(self.rows),
                           "total_episodes": writer.num_episodes})
        self.rows = []


def servo_table(report: dict, joints: list[str], t_zero: float = 0.0):
    """The servo loop's decimated timeline (telemetry rate): time (relative to the run's first observation, like
    the rows), command, measurement, plan target per joint."""
    import pyarrow as pa

    tl = report.get("timeline") or {}
    t = np.asarray(tl.get("t", []), dtype=np.float64) - t_zero
    cols: dict[str, Any] = {"t": pa.array(t)}
    for name in ("cmd", "meas", "target"):
        a = np.asarray(tl.get(name, np.zeros((0, len(joints)))), dtype=np.float64).reshape(len(t), -1)
        for j, joint in enumerate(joints[: a.shape[1]]):
            cols[f"{name}.{joint}"] = pa.array(a[:, j])
    return pa.table(cols)
