"""Episodes -> the evaluation document (JSON) and the terminal table.

Document layout (schema 1): the top level pools every episode of the evaluation (`success_rate`,
`episodes`, `time_to_success`, `join_jump_max`, `conditions`), and `runs` holds the same summary per
condition (injected latency, synchronous or not), each with its `per_episode` rows. With one condition
the top level and its only run agree. An episode that failed with an error is not an episode result: it is an
`errors` row (index, seed, one-line reason) of its run, counted in `episode_errors` (per run and pooled), and
the rates are over the finished episodes. `interrupted` is true when Ctrl-C / SIGTERM ended the evaluation early
(the document then holds what had finished).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgedp.evaluation.episodes import Condition, EpisodeError, EpisodeResult

SCHEMA_VERSION = 1


def _stats(values: Sequence[float]) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "n": int(a.size)}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a success rate: with 5-10 episodes per cell the rate alone overstates
    what was measured, and unlike the normal approximation this one stays inside [0, 1] at 0 % and 100 %."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den
    return [max(0.0, mid - half), min(1.0, mid + half)]


def summarize(results: Sequence[EpisodeResult], conditions: dict, per_episode: bool = True) -> dict:
    n = len(results)
    wins = [r for r in results if r.success]
    d: dict[str, Any] = {
        "success_rate": (len(wins) / n) if n else 0.0,
        "episodes": n,
        "successes": len(wins),
        "success_ci95": wilson_interval(len(wins), n),
        "time_to_success": _stats([r.time_to_success_s for r in wins]),
        "join_jump_max": {
            "position_rad": max((r.join_jump_position_rad for r in results), default=0.0),
            "velocity_rad_s": max((r.join_jump_velocity_rad_s for r in results), default=0.0),
            "position_rad_mean": _stats([r.join_jump_position_rad for r in results])["mean"],
        },
        "final_distance_m": _stats([r.final_distance_m for r in results]),
        "inference_ms_p50": _stats([r.inference_ms_p50 for r in results])["median"],
        "dropped_steps": int(sum(r.dropped_steps for r in results)),
        "uncovered_ticks": int(sum(r.uncovered_ticks for r in results)),
        "inpaint_fallbacks": int(sum(r.inpaint_fallbacks for r in results)),
        "joins": int(sum(max(0, r.chunks - 1) for r in results)),
        "watchdog_stops": sum(r.stopped_by == "watchdog" for r in results),  # failed episodes: bus timeouts
        "chosen_target_counts": _counts([r.chosen_target for r in results]),
        "conditions": conditions,
    }
    coverage = [r.max_coverage for r in results if r.max_coverage is not None]
    if coverage:  # Push-T: the paper's score is the mean over episodes of each episode's maximum coverage
        d["max_coverage"] = _stats(coverage)
    if per_episode:
        d["per_episode"] = [asdict(r) for r in results]
    return d


def _counts(values: Sequence[Optional[int]]) -> dict:
    out: dict[str, int] = {}
    for v in values:
        if v is not None:
            out[str(v)] = out.get(str(v), 0) + 1
    return out


def build_document(runs: Sequence[tuple[Condition, list[EpisodeResult]]], session: dict, task: str,
                   config_path: str, seeds: Sequence[int], timeout: float,
                   errors: Sequence[tuple[Condition, EpisodeError]] = (), interrupted: bool = False) -> dict:
    common = dict(session, task=task, config=config_path, episode_timeout_s=timeout, seeds=list(seeds))
    per_run = []
    for c, res in runs:
        run = summarize(res, dict(common, latency_ms=c.latency_ms, sync=c.sync))
        errs = [asdict(e) for ec, e in errors if ec == c]
        run["episode_errors"] = len(errs)
        run["errors"] = errs
        per_run.append(run)
    pooled = summarize([r for _, res in runs for r in res],
                       dict(common, latency_ms=sorted({c.latency_ms for c, _ in runs}),
                            sync=sorted({c.sync for c, _ in runs})), per_episode=False)
    pooled["episode_errors"] = len(errors)
    return {"schema": SCHEMA_VERSION, "tool": "edgedp eval", "interrupted": bool(interrupted), **pooled,
            "runs": per_run}


def write_json(path: Path, doc: dict) -> None:
    """Atomically (firmware_bridge.atomic_file): a reader never sees half a document."""
    from firmware_bridge.atomic_file import atomic_write_text

    atomic_write_text(Path(path), json.dumps(doc, indent=1) + "\n")


def _f(x: Optional[float], fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def table(doc: dict, title: Optional[str] = None):
    from rich.table import Table

    c = doc["conditions"]
    t = Table(title=title or f"edgedp eval: {c.get('task')} — {c.get('checkpoint')} ({c.get('backend')} "
                             f"{c.get('precision')}, K={c.get('steps')}, {c.get('sampler')}, join "
                             f"{c.get('join')}{' (no soft overlap)' if c.get('inpaint_overlap') == 'none' else ''})")
    coverage = any("max_coverage" in run for run in doc["runs"])
    errors = any(run.get("episode_errors") for run in doc["runs"])
    inpaint = c.get("join") == "inpaint"
    for col in ("planning", "+latency", "episodes", *(("errors",) if errors else ()), "success",
                *(("mean max coverage",) if coverage else ()),
                "time to success mean / median", "join jump max (rad / rad/s)", *(("cross-faded joins",) if inpaint else ()),
                "inference p50", "dropped steps"):
        t.add_column(col, justify="left" if col == "planning" else "right")
    for run in doc["runs"]:
        rc = run["conditions"]
        tts = run["time_to_success"]
        jj = run["join_jump_max"]
        t.add_row("sync" if rc["sync"] else "async", f"{rc['latency_ms']:g} ms", str(run["episodes"]),
                  *((str(run.get("episode_errors", 0)),) if errors else ()),
                  f"{run['success_rate'] * 100:.0f} % ({run['successes']}; 95 % CI "
                  f"{run['success_ci95'][0] * 100:.0f}–{run['success_ci95'][1] * 100:.0f})",
                  *((_f(run.get("max_coverage", {}).get("mean"), "{:.3f}"),) if coverage else ()),
                  f"{_f(tts['mean'], '{:.2f}')} / {_f(tts['median'], '{:.2f}')} s",
                  f"{jj['position_rad']:.4f} / {jj['velocity_rad_s']:.3f}",
                  *((f"{run.get('inpaint_fallbacks', 0)} of {run.get('joins', 0)}",) if inpaint else ()),
                  f"{_f(run['inference_ms_p50'], '{:.0f}')} ms", str(run["dropped_steps"]))
    return t
