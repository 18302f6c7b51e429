"""Run telemetry: per-stage latencies, servo timing, counters; a live status line, a summary, JSON and a plot.

The planner side records into this object directly (same process); the servo side reports through the
control block (live) and its final report (histogram of period errors, counters, joins, a decimated
timeline). `to_dict()` is the documented JSON schema (docs/runtime.md).
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from firmware_bridge.atomic_file import atomic_path, atomic_write_bytes
from edgedp.runtime.control import LiveStatus
from edgedp.runtime.instruments import HIST_BIN_US, HIST_BINS

SCHEMA_VERSION = 1
POLICY_STAGES = ("normalize", "encode", "sample", "unnormalize")  # reported by the policy's predict_chunk


def _pcts(values, scale: float = 1.0) -> dict:
    a = np.asarray(values, dtype=np.float64) * scale
    if a.size == 0:
        return {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "mean": float(a.mean()), "n": int(a.size)}


def hist_percentiles(hist: np.ndarray, max_us: float) -> dict:
    """p50/p99 from the servo's period-error histogram (upper bin edge: never optimistic), exact max."""
    total = int(hist.sum())
    if total == 0:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    c = np.cumsum(hist)

    def q(p: float) -> float:
        i = int(np.searchsorted(c, p * total))
        return min((i + 1) * HIST_BIN_US, max_us) if i < HIST_BINS else max_us

    return {"p50": q(0.5), "p99": q(0.99), "max": float(max_us), "n": total}


def _hist_or_none(s: dict, name: str) -> dict:
    h = s.get(f"{name}_hist")
    if h is None:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return hist_percentiles(np.asarray(h), s.get(f"{name}_max_us", 0.0))


class Telemetry:
    def __init__(self, servo_rate_hz: float, mode: str, config_summary: dict | None = None):
        self.servo_rate_hz = servo_rate_hz
        self.mode = mode
        self.config = config_summary or {}
        self._lock = threading.Lock()
        self.stage_ms: dict[str, list[float]] = {"observation": [], "normalize": [], "encode": [], "sample": [],
                                                 "denoise_step": [], "unnormalize": [], "inference": []}
        self.observation_age_ms: list[float] = []
        self.chunk_log: list[dict] = []  # per published chunk: seq, t_obs, t_publish, latency
        self.stale_observations = 0
        self.not_ready = 0
        self.planner_errors: list[str] = []
        self.servo: dict[str, Any] = {}
        self.duration_s = 0.0
        self.stopped_by = "unknown"
        self.exit_code = 0
        self.notes: list[str] = []
        self.denoise_step_source = "none"
        self.cameras: dict[str, Any] = {}  # camera name -> feature, frames seen by the runtime, driver counters
        self.mode_reason = ""  # why the servo loop runs as a thread or a process (in the summary)
        self.stop_timing: dict[str, float] = {}  # ms per stop stage (servo safe stop, planner, cameras, devices)
        self.sim_servos_after_stop: Optional[dict] = None  # emulated servos' torque/position after the stop
        self.alerts: list[str] = []  # what was printed to stderr at the end (faults, incomplete safe stop)
        self.policy_source = "local"  # remote | local: who answered the last chunk (policy.remote)
        self.policy_events: list[dict] = []  # remote policy faults: unavailable, fallback, retries (with times)

    # ---- cameras --------------------------------------------------------------------------------
    def record_camera(self, name: str, feature: str, frames_seen: int, poll_errors: int,
                      counters: Optional[dict] = None) -> None:
        """One camera's end-of-run figures: what the runtime saw plus the driver's own counters (frames,
        drops, reconnects, ...), flattened so a drop or reconnect is visible at a glance in the JSON."""
        info: dict[str, Any] = {"feature": feature, "frames_seen": int(frames_seen), "poll_errors": int(poll_errors)}
        for k, v in (counters or {}).items():
            if k in info:  # never let a driver key shadow the runtime's own
                k = f"driver_{k}"
            info[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        with self._lock:
            self.cameras[name] = info

    # ---- planner side ---------------------------------------------------------------------------
    def record_inference(self, seq: int, t_obs: float, t_start: float, obs_ms: float, stages: dict[str, float],
                         steps: int, t_publish: float, age_ms: float, t0: Optional[float] = None,
                         decided: Optional[int] = None) -> None:
        """One published chunk: `stages` is what the policy itself measured (normalize, encode, sample,
        unnormalize, in ms; see DiffusionPolicy.predict_chunk); the denoising step is sample / K."""
        with self._lock:
            self.stage_ms["observation"].append(obs_ms)
            for name in POLICY_STAGES:
                self.stage_ms[name].append(float(stages.get(name, 0.0)))
            self.stage_ms["denoise_step"].append(float(stages.get("sample", 0.0)) / max(1, steps))
            self.denoise_step_source = "sampler time / K"
            self.stage_ms["inference"].append((t_publish - t_start) * 1e3)
            self.observation_age_ms.append(age_ms)
            entry = {"seq": seq, "t_obs": t_obs, "t_start": t_start, "t_publish": t_publish}
            if t0 is not None:  # when the chunk's first published action is due
                entry["t0"] = t0
            if decided is not None:  # inpainting: published steps decided by the previous chunk
                entry["decided"] = decided
            self.chunk_log.append(entry)

    def note_policy(self, policy, retry: str | None = None) -> None:
        """A remote policy's fault events and current source (a local policy has neither: nothing changes)."""
        take = getattr(policy, "take_events", None)
        if take is None:
            return
        with self._lock:
            self.policy_events.extend(take())
            if retry is not None:
                self.policy_events.append({"t": time.monotonic(), "event": "retry", "detail": retry})
            self.policy_source = getattr(policy, "source", "remote")

    # ---- results ----------------------------------------------------------------------------------
    def e2e_latency_ms(self) -> list[float]:
        """Observation capture to the first executed action of the resulting chunk (the servo's join time)."""
        joins = {j["seq"]: j["t"] for j in self.servo.get("adoptions", self.servo.get("joins", []))}
        out = []
        for c in self.chunk_log:
            t = joins.get(c["seq"])
            if t is not None:
                out.append((t - c["t_obs"]) * 1e3)
        return out

    def to_dict(self) -> dict:
        s = self.servo
        joins = s.get("joins", [])
        hist = s.get("period_error_hist")
        period = hist_percentiles(np.asarray(hist), s.get("period_error_max_us", 0.0)) if hist is not None else \
            {"p50": None, "p99": None, "max": None, "n": 0}
        inf = _pcts(self.stage_ms["inference"])
        d = {
            "schema": SCHEMA_VERSION,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "duration_s": round(self.duration_s, 3),
            "stopped_by": self.stopped_by,
            "exit_code": self.exit_code,
            "servo_rate_hz": self.servo_rate_hz,
            "servo_ticks": s.get("ticks", 0),
            "servo_period_error_us": period,
            "servo_wake_error_us": _hist_or_none(s, "wake_error"),
            "servo_tick_work_us": _hist_or_none(s, "tick_work"),
            "servo_scheduling": s.get("scheduling"),
            "inference_ms": {"p50": inf["p50"], "p99": inf["p99"], "max": inf["max"], "mean": inf["mean"]},
            "stages_ms": {k: _pcts(v) for k, v in self.stage_ms.items()},
            "denoise_step_source": self.denoise_step_source,
            "observation_age_ms": _pcts(self.observation_age_ms),
            "e2e_latency_ms": _pcts(self.e2e_latency_ms()),
            "overruns": s.get("overruns", 0),
            "skipped_ticks": s.get("skipped_ticks", 0),
            "bus_errors": s.get("bus_errors", 0),
            "safety_clamps": s.get("safety_clamps", 0),
            "nonfinite_targets": s.get("nonfinite_targets", 0),
            "uncovered_ticks": s.get("uncovered_ticks", 0),
            "stale_observations": self.stale_observations,
            "chunks": len(self.chunk_log),
            "chunks_executed": s.get("chunks_executed", 0),
            "dropped_steps": int(sum(j["dropped_steps"] for j in s.get("adoptions", joins))),
            "join_jump_max": {
                "position_rad": max((j["position_jump"] for j in joins), default=0.0),
                "velocity_rad_s": max((j["velocity_jump"] for j in joins), default=0.0),
            },
            # inpaint joins cross-faded because the chunk came later than the planner assumed (runtime/joins.py)
            "inpaint_fallbacks": sum(bool(j.get("inpaint_fallback")) for j in joins),
            "joins": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in j.items()} for j in joins],
            "servo_stop": s.get("stop", {}),
            "stop_ms": self.stop_timing,
            "sim_servos_after_stop": self.sim_servos_after_stop,
            "alerts": self.alerts,
            "bus_stats": s.get("bus_stats", {}),
            "cameras": self.cameras,
            "servo_end": s.get("reason"),
            "servo_error": s.get("error"),
            "planner_errors": self.planner_errors[:20],
            "policy_source": self.policy_source,
            "policy_events": self.policy_events[:200],
            "notes": self.notes,
            "config": self.config,
        }
        if hist is not None:
            h = np.asarray(hist)
            nz = np.nonzero(h)[0]
            d["servo_period_error_hist"] = {"bin_us": HIST_BIN_US,
                                            "bins": {str(int(i * HIST_BIN_US)): int(h[i]) for i in nz}}
        return d

    def write_json(self, path: Path) -> None:
        """Strict JSON: a non-finite number (a NaN chunk's join jump, say) is written as null, never as NaN."""
        _atomic_write(Path(path), json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False).encode())

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tl = self.servo.get("timeline") or {}
        t = np.asarray(tl.get("t", []))
        fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
        t0 = t[0] if t.size else (self.chunk_log[0]["t_obs"] if self.chunk_log else 0.0)
        ax = axes[0]
        if t.size:
            cmd, meas, tgt = np.asarray(tl["cmd"]), np.asarray(tl["meas"]), np.asarray(tl["target"])
            for j in range(cmd.shape[1]):
                ax.plot(t - t0, cmd[:, j], lw=1.2, label=f"joint {j} command")
                ax.plot(t - t0, meas[:, j], lw=0.8, ls="--", label=f"joint {j} measured")
                ax.plot(t - t0, tgt[:, j], lw=0.6, alpha=0.5, label=f"joint {j} plan")
        for j in self.servo.get("joins", []):
            ax.axvline(j["t"] - t0, color="0.8", lw=0.5, zorder=0)
        ax.set_ylabel("rad")
        ax.legend(fontsize=6, ncol=3, loc="upper right")
        ax.set_title("joint command / measured / plan (grey: chunk joins)")
        ax = axes[1]
        if self.chunk_log:
            tp = np.array([c["t_publish"] for c in self.chunk_log]) - t0
            ax.plot(tp, self.stage_ms["inference"], "o-", ms=3, label="inference (obs -> publish)")
            ax.plot(tp, self.stage_ms["sample"], ".-", ms=3, label="sampler")
            ax.plot(tp, self.observation_age_ms, ".", ms=3, label="observation age")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
        ax = axes[2]
        if t.size:
            ax.plot(t - t0, tl["err_us"], ".", ms=1.5)
        ax.set_ylabel("servo wake error µs")
        ax.set_xlabel("s")
        fig.tight_layout()
        try:
            with atomic_path(path, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=90)
        finally:
            plt.close(fig)

    # ---- terminal ---------------------------------------------------------------------------------
    def live_line(self, live: LiveStatus, phase: str, elapsed: float) -> str:
        inf = self.stage_ms["inference"]
        last = f"{inf[-1]:.0f}" if inf else "-"
        return (f"{elapsed:6.1f}s {phase:<8} ticks {live.ticks} err {live.period_error_us:.0f}µs "
                f"(max {live.max_period_error_us:.0f}) overruns {live.overruns} "
                f"chunks {len(self.chunk_log)}/{live.chunks} inference {last} ms "
                f"stale {self.stale_observations} bus err {live.bus_errors} clamps {live.safety_clamps}"
                + self._policy_status())

    def _policy_status(self) -> str:
        """' policy remote' / ' policy local (fallback)' / ' policy remote: no reply x3' for remote runs."""
        if not self.policy_events and self.policy_source == "local":
            return ""
        misses = sum(1 for e in self.policy_events if e["event"] == "remote_unavailable")
        fell_back = any(e["event"] == "fallback_local" for e in self.policy_events)
        if fell_back:
            return f" policy local (server lost, {misses} missed)"
        return " policy remote" + (f": no reply x{misses}" if misses else "")

    def summary_table(self):
        from rich.table import Table

        d = self.to_dict()
        t = Table(title=f"edgedp run: {d['duration_s']:.1f} s, stopped by {d['stopped_by']} ({self.mode} servo)",
                  caption=f"servo loop: {self.mode_reason}" if self.mode_reason else None)
        t.add_column("metric")
        t.add_column("value", justify="right")

        def f(x, fmt="{:.1f}"):
            return "-" if x is None else fmt.format(x)

        pe = d["servo_period_error_us"]
        t.add_row("servo rate", f"{d['servo_rate_hz']:g} Hz ({d['servo_ticks']} ticks)")
        t.add_row("servo period error p50 / p99 / max", f"{f(pe['p50'])} / {f(pe['p99'])} / {f(pe['max'])} µs")
        we, tw = d["servo_wake_error_us"], d["servo_tick_work_us"]
        t.add_row("  wake-up error p50 / p99 (ticks that slept)", f"{f(we['p50'])} / {f(we['p99'])} µs")
        t.add_row("  tick work (bus + compute) p50 / p99 / max", f"{f(tw['p50'])} / {f(tw['p99'])} / {f(tw['max'])} µs")
        t.add_row("overruns (skipped ticks)", f"{d['overruns']} ({d['skipped_ticks']})")
        for k in ("observation", "normalize", "encode", "denoise_step", "sample", "unnormalize", "inference"):
            s = d["stages_ms"][k]
            t.add_row(f"{k} p50 / p99", f"{f(s['p50'], '{:.2f}')} / {f(s['p99'], '{:.2f}')} ms")
        e = d["e2e_latency_ms"]
        t.add_row("observation -> first executed action p50 / p99",
                  f"{f(e['p50'])} / {f(e['p99'])} ms")
        t.add_row("chunks published / executed", f"{d['chunks']} / {d['chunks_executed']}")
        t.add_row("steps dropped (already past)", str(d["dropped_steps"]))
        jj = d["join_jump_max"]
        t.add_row("join jump max (position / velocity)",
                  f"{f(jj['position_rad'], '{:.4f}')} rad / {f(jj['velocity_rad_s'], '{:.3f}')} rad/s")
        t.add_row("stale observations", str(d["stale_observations"]))
        t.add_row("uncovered ticks (held)", str(d["uncovered_ticks"]))
        t.add_row("bus errors", str(d["bus_errors"]))
        for name, c in d["cameras"].items():
            t.add_row(f"camera {name}: frames / drops / reconnects",
                      f"{c.get('frames', c['frames_seen'])} / {c.get('drops', '-')} / {c.get('reconnects', '-')}")
        t.add_row("safety clamps (non-finite)", f"{d['safety_clamps']} ({d['nonfinite_targets']})")
        return t


def json_safe(x: Any) -> Any:
    """The same structure with every non-finite float as None and numpy values as plain Python."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
