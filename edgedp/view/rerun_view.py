"""`edgedp run --view`: camera frames, measured vs commanded joints, chunk boundaries and the planned chunk, to rerun.

Like the dataset recorder, the viewer is a planner listener: the planner thread only enqueues each published
chunk, and this module's thread does the logging (rerun-sdk batches and sends on its own threads). The servo
loop is untouched, so its commands are streamed as the planned targets it interpolates (``joints/target``)
while running, and the exact commands it wrote (safety-filtered, ``joints/commanded``) and the measured
positions at the telemetry rate (``joints/measured``) are logged from its timeline when the run stops.

Entity paths (timeline ``time``: seconds since the run's first observation, host monotonic clock):
- ``camera/<feature>``: the newest image of each observation, exactly as the policy got it;
- ``joints/measured/<joint>``: joint samples the observation used (live), then the servo timeline;
- ``joints/target/<joint>``: the executed slice of each chunk at its action times;
- ``joints/commanded/<joint>``: the servo loop's written goals (at stop);
- ``chunk/boundary``: one text event per chunk (seq, observation time, latency), ``chunk/seq``: its number;
- ``plan/<joint>``: every step of every predicted chunk as points at the time it was predicted for (the
  head before the observation and the unexecuted tail included).
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Optional


def require_rerun():
    try:
        import rerun as rr
    except ImportError:
        from edgedp.errors import UserError

        raise UserError("--view needs rerun-sdk: pip install 'edgedp[view]' (or pip install rerun-sdk)") from None
    return rr


class RerunView:
    """Planner listener that streams to rerun. ``target``: 'serve', a ``.rrd`` path, or a rerun+http URL."""

    def __init__(self, target: str, joint_names: list[str], image_keys: list[str], state_key: str,
                 application_id: str = "edgedp"):
        rr = require_rerun()
        self.rr = rr
        self.joints = list(joint_names)
        self.image_keys = list(image_keys)
        self.state_key = state_key
        self.rec = rr.RecordingStream(application_id)
        self.where = self._open(target)
        self.rec.send_blueprint(layout(self.image_keys))
        for name in self.joints:  # plans as points, the rest as lines
            self.rec.log(f"plan/{name}", rr.SeriesPoints(marker_sizes=2.0), static=True)
        self.t_zero: Optional[float] = None
        self.dropped = 0
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="rerun-view", daemon=True)
        self._thread.start()

    def _open(self, target: str) -> str:
        if target == "serve":
            url = self.rec.serve_grpc()
            return f"serving on {url} (open it with: rerun --connect {url})"
        if target.startswith(("rerun://", "rerun+http://", "rerun+https://")):
            self.rec.connect_grpc(target)
            return f"streaming to {target}"
        path = Path(target)
        if path.suffix != ".rrd":
            from edgedp.errors import UserError

            raise UserError(f"--view {target}: give 'serve', a .rrd file to save, or a rerun+http:// viewer URL")
        if not path.parent.exists():
            from edgedp.errors import UserError

            raise UserError(f"--view: folder {path.parent} does not exist")
        self.rec.save(str(path))
        return f"saving to {path} (open it with: rerun {path})"

    # ---- planner thread -------------------------------------------------------------------------
    def __call__(self, event) -> None:
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    # ---- viewer thread --------------------------------------------------------------------------
    def _time(self, t: float) -> None:
        self.rec.set_time("time", duration=max(0.0, t - self.t_zero))

    def _run(self) -> None:
        while True:
            ev = self._q.get()
            if ev is None:
                return
            try:
                self.log_chunk(ev)
            except Exception:
                self.dropped += 1

    def log_chunk(self, ev) -> None:
        rr = self.rr
        if self.t_zero is None:
            self.t_zero = float(ev.t_obs)
        self._time(ev.t_obs)
        for key in self.image_keys:
            if key in ev.obs:
                self.rec.log(f"camera/{key}", rr.Image(ev.obs[key][-1]))
        times = ev.sample_times.get("joints")
        states = ev.obs.get(self.state_key)
        if times is not None and states is not None:
            for t, q in zip(times, states):
                self._time(float(t))
                self._log_joints("joints/measured", q)
        self._time(ev.t_publish)
        self.rec.log("chunk/boundary", rr.TextLog(f"chunk {ev.seq}: observed {ev.t_obs - self.t_zero:.3f} s, "
                                                  f"published after {1e3 * (ev.t_publish - ev.t_plan_start):.0f} ms"))
        self.rec.log("chunk/seq", rr.Scalars(float(ev.seq)))
        # Action j of the chunk is for t_obs + (j - first) * dt; the servo loop executes [first, first+executed).
        for j in range(ev.first, ev.first + ev.executed):
            self._time(ev.t0 + (j - ev.first) * ev.dt)
            self._log_joints("joints/target", ev.actions[j])
        # The whole prediction (also the steps before the observation and the unexecuted tail), as points at the
        # times they were predicted for: successive chunks overlap, so one sees how much the plan changes.
        for j in range(len(ev.actions)):
            self._time(ev.t0 + (j - ev.first) * ev.dt)
            self._log_joints("plan", ev.actions[j])

    def _log_joints(self, prefix: str, q) -> None:
        for name, v in zip(self.joints, q):
            self.rec.log(f"{prefix}/{name}", self.rr.Scalars(float(v)))

    def finish(self, servo_report: Optional[dict]) -> None:
        """Stop the live stream; add the servo loop's commands and measurements; flush (the .rrd is complete)."""
        self._q.put(None)
        self._thread.join(5.0)
        tl = (servo_report or {}).get("timeline") or {}
        if self.t_zero is not None and len(tl.get("t", [])):
            import numpy as np

            rr = self.rr
            t = np.asarray(tl["t"], dtype=np.float64) - self.t_zero
            keep = t >= 0
            for name, path in (("cmd", "joints/commanded"), ("meas", "joints/measured")):
                values = np.asarray(tl[name], dtype=np.float64)[keep]
                for i, joint in enumerate(self.joints[: values.shape[1]]):
                    self.rec.send_columns(f"{path}/{joint}", indexes=[rr.TimeColumn("time", duration=t[keep])],
                                          columns=rr.Scalars.columns(scalars=values[:, i]))
        self.rec.flush()
        self.rec.disconnect()


def layout(image_keys: list[str]):
    """The viewer's default layout: cameras left; joints over time, the planned chunk and the chunk log right."""
    import rerun.blueprint as rrb

    cams = [rrb.Spatial2DView(origin=f"camera/{k}", name=k) for k in image_keys] or [rrb.Spatial2DView(origin="camera")]
    return rrb.Blueprint(rrb.Horizontal(
        rrb.Vertical(*cams),
        rrb.Vertical(rrb.TimeSeriesView(origin="joints", name="joints: measured / target / commanded (rad)"),
                     rrb.TimeSeriesView(origin="plan", name="every predicted step of every chunk (rad)"),
                     rrb.TextLogView(origin="chunk/boundary", name="chunks"),
                     row_shares=[3, 2, 1]),
        column_shares=[1, 2]))
