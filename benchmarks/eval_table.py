"""The evaluation comparison grid: closed-loop success on the simulated reach tasks through the full runtime.

Rows (every cell is `edgedp eval`'s episode runner, same seeds in every cell):
  - multimodal: diffusion vs MSE regression (same network size, same data) on reach_multimodal;
  - latency:    asynchronous runtime vs synchronous baseline, with 0 / 50 / 100 / 200 ms injected latency;
  - precision:  float32 (eager) vs quantized (cpu-int8) diffusion, asynchronous, 0 ms.

Checkpoints: the trained ones under models/trained/ when they exist (found from their provenance: the
`regression` flag and the dataset's task), else the random `small` preset, labelled "random preset" in
every row (it moves but does not solve the task, so its success rate says nothing about learning); the
regression row needs a trained regression checkpoint (a random network is no regression policy).

    python benchmarks/eval_table.py --episodes 8 --timeout 8
    python benchmarks/eval_table.py --reach models/trained/sim_reach --multimodal models/trained/sim_mm \
        --regression models/trained/sim_mm_regression

Writes benchmarks/results/eval_table.json (every cell with its per-episode rows) and eval_table.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgedp.config import load_config  # noqa: E402
from edgedp.evaluation.episodes import Condition, EvalSession  # noqa: E402
from edgedp.evaluation.report import summarize, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"reach": ROOT / "examples" / "sim.yaml", "reach_multimodal": ROOT / "examples" / "sim_multimodal.yaml"}
RANDOM = "preset:small"


@dataclass(frozen=True)
class Policy:
    """One session: what is loaded and compiled once."""

    task: str
    checkpoint: str
    kind: str  # diffusion | regression
    backend: str = "eager"
    precision: str = "fp32"

    @property
    def trained(self) -> bool:
        return not self.checkpoint.startswith("preset:")

    @property
    def label(self) -> str:
        name = self.kind if self.trained else f"{self.kind} (random preset)"
        return name


@dataclass(frozen=True)
class Cell:
    group: str
    policy: Policy
    condition: Condition


# ------------------------------------------------------------------------------------------- checkpoints
def _task_of(ckpt: Path, prov: dict) -> Optional[str]:
    """The task a checkpoint was trained on: its dataset's meta/info.json, else its name."""
    data = prov.get("trained_on")
    if data:
        info = Path(data) / "meta" / "info.json"
        if info.is_file():
            try:
                return json.loads(info.read_text()).get("task")
            except (OSError, ValueError):
                pass
    name = ckpt.name.lower()
    return "reach_multimodal" if ("multimodal" in name or "_mm" in name) else "reach"


def discover(root: Path = ROOT / "models" / "trained") -> dict[str, str]:
    """{role: checkpoint} for roles reach / multimodal / regression (regression on the multimodal task)."""
    from models.native import is_native_dir, read_spec

    found: dict[str, str] = {}
    if not root.is_dir():
        return found
    for d in sorted(p for p in root.rglob("*") if p.is_dir() and is_native_dir(p)):
        try:
            doc = read_spec(d)[1]
        except Exception:
            continue
        prov = doc.get("provenance") or {}
        task = _task_of(d, prov)
        regression = bool(prov.get("regression")) or "regression" in d.name.lower()
        role = ("regression" if task == "reach_multimodal" else "regression_reach") if regression else (
            "multimodal" if task == "reach_multimodal" else "reach")
        found.setdefault(role, str(d))
    return found


def grid(ckpts: dict[str, str], latencies: list[float]) -> list[Cell]:
    reach = Policy("reach", ckpts.get("reach", RANDOM), "diffusion")
    mm = Policy("reach_multimodal", ckpts.get("multimodal", RANDOM), "diffusion")
    cells = [Cell("multimodal", mm, Condition(0.0, False))]
    if "regression" in ckpts:  # a random preset is no regression policy: without the checkpoint, no row
        cells.append(Cell("multimodal", Policy("reach_multimodal", ckpts["regression"], "regression"),
                          Condition(0.0, False)))
    for sync in (False, True):
        cells += [Cell("latency", reach, Condition(lat, sync)) for lat in latencies]
    cells.append(Cell("precision", Policy("reach", reach.checkpoint, "diffusion", "cpu-int8", "int8"),
                      Condition(0.0, False)))
    if "regression_reach" in ckpts:  # regression is not handicapped when demonstrations are unimodal
        cells.append(Cell("multimodal", Policy("reach", ckpts["regression_reach"], "regression"), Condition(0.0, False)))
    return cells


# ------------------------------------------------------------------------------------------------- run
def run_grid(cells: list[Cell], episodes: int, timeout: float, seed: int, log=print) -> list[dict]:
    seeds = list(range(seed, seed + episodes))
    by_policy: dict[Policy, list[Cell]] = {}
    for c in cells:
        by_policy.setdefault(c.policy, []).append(c)
    rows: dict[Cell, dict] = {}
    for pol, pcells in by_policy.items():
        cfg = load_config(CONFIGS[pol.task])
        cfg.policy.checkpoint = pol.checkpoint
        cfg.policy.backend = pol.backend
        cfg.policy.precision = pol.precision
        if pol.trained:
            cfg.policy.steps = None  # the checkpoint's own K (1 for the regression baseline)
        t0 = time.monotonic()
        session = EvalSession(cfg)
        log(f"[{pol.task}] {pol.label} {pol.backend}/{pol.precision} K={session.summary['steps']}: "
            f"built in {time.monotonic() - t0:.1f} s")
        with session:
            for c in pcells:
                t1 = time.monotonic()
                res = session.run(c.condition, seeds, timeout)
                summary = summarize(res, dict(session.summary, task=pol.task, dwell_s=0.2, latency_ms=c.condition.latency_ms,
                                              sync=c.condition.sync, episode_timeout_s=timeout, seeds=seeds))
                summary.update(group=c.group, policy=pol.label, trained=pol.trained)
                rows[c] = summary
                log(f"    {c.condition.label:<14} success {summary['success_rate'] * 100:5.1f} % "
                    f"({summary['successes']}/{summary['episodes']}), {time.monotonic() - t1:.0f} s")
    return [rows[c] for c in cells]


# ------------------------------------------------------------------------------------------- output
def _f(x, fmt: str) -> str:
    return "–" if x is None else fmt.format(x)


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| comparison | task | policy | backend / precision | K | planning | +latency | success (n; 95 % CI) | "
            "time to success mean / median (s) | join jump max (rad / rad/s) | inference p50 (ms) | "
            "final distance median (cm) | target chosen (0/1) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["conditions"]
        tts, jj = r["time_to_success"], r["join_jump_max"]
        counts = r["chosen_target_counts"]
        chosen = f"{counts.get('0', 0)}/{counts.get('1', 0)}" if c["task"] == "reach_multimodal" else ""
        lines.append(
            f"| {r['group']} | {c['task']} | {r['policy']} | {c['backend']} / {c['precision']} | {c['steps']} | "
            f"{'sync' if c['sync'] else 'async'} | {c['latency_ms']:g} ms | "
            f"{r['success_rate'] * 100:.0f} % ({r['successes']}/{r['episodes']}; "
            f"{r['success_ci95'][0] * 100:.0f}–{r['success_ci95'][1] * 100:.0f}) | "
            f"{_f(tts['mean'], '{:.2f}')} / {_f(tts['median'], '{:.2f}')} | "
            f"{jj['position_rad']:.4f} / {jj['velocity_rad_s']:.3f} | {_f(r['inference_ms_p50'], '{:.0f}')} | "
            f"{_f(r['final_distance_m']['median'] * 100 if r['final_distance_m']['median'] is not None else None, '{:.1f}')} | "
            f"{chosen} |")
    notes = [f"{meta['episodes']} episodes per cell (scene seeds {meta['seeds'][0]}–{meta['seeds'][-1]}), "
             f"timeout {meta['timeout_s']:g} s, measured {meta['date']} in {meta['wall_s']:.0f} s wall on "
             f"{meta['machine']}."]
    if any(not r["trained"] for r in rows):
        notes.append("Rows marked *random preset* use untrained weights: they exercise the runtime, not the task.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=8.0, help="seconds per episode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latencies", default="0,50,100,200")
    ap.add_argument("--reach", help="diffusion checkpoint trained on reach")
    ap.add_argument("--multimodal", help="diffusion checkpoint trained on reach_multimodal")
    ap.add_argument("--regression", help="MSE-regression checkpoint trained on reach_multimodal")
    ap.add_argument("--only", default=None, help="comma-separated groups to run (multimodal,latency,precision)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_table")
    args = ap.parse_args(argv)
    ckpts = discover()
    for role in ("reach", "multimodal", "regression"):
        if getattr(args, role):
            ckpts[role] = str(Path(getattr(args, role)).resolve())
    print("checkpoints:", json.dumps(ckpts) if ckpts else "none trained found; random presets")
    cells = grid(ckpts, [float(x) for x in args.latencies.split(",")])
    if args.only:
        keep = set(args.only.split(","))
        cells = [c for c in cells if c.group in keep]
    t0 = time.monotonic()
    rows = run_grid(cells, args.episodes, args.timeout, args.seed)
    import os
    import platform

    meta = {"episodes": args.episodes, "timeout_s": args.timeout, "seeds": list(range(args.seed, args.seed + args.episodes)),
            "wall_s": time.monotonic() - t0, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "checkpoints": ckpts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), {"meta": meta, "rows": rows})
    md = markdown(rows, meta)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(md)
    tmp.replace(args.out.with_suffix(".md"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
