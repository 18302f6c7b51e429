"""Issue 13's Push-T results table through the full runtime: every cell is `edgedp eval` itself, sharded.

Each cell (the list CELLS below, in priority order) runs as ``--shards S`` parallel ``edgedp eval``
processes over disjoint ranges of the held-out gym-pusht seeds (100000 + offset, the same seeds in every
cell, so cells compare episode for episode). A shard runs its seeds in batches of ``--batch`` episodes, one
``edgedp eval --json`` per batch: `edgedp eval` writes nothing when an episode fails with a runtime error, so
a batch bounds what such a failure costs; a failed batch is re-run seed by seed (each seed tried twice) and a
seed that still fails is reported in the cell's ``errors`` and left out of its episodes. Watchdog stops are
failed episodes (`edgedp eval` counts them so) and are counted beside.

What `edgedp eval` has no flag for (``safety.join``, ``policy.sampler``) goes into a derived copy of the
cell's config in OUT/cells/NAME/config.yaml, with every relative path of the original made absolute. A
compiled backend is built once (``edgedp compile``, into the config's cache) before the shards start, so
the shards load it instead of building it twice at once.

    python benchmarks/pusht_table.py                                   # every cell, 2 shards
    python benchmarks/pusht_table.py --cells state_async_k10,image_async_k10 --video runs/pusht_videos
    python benchmarks/pusht_table.py --state-checkpoint runs/pusht_state --image-checkpoint runs/pusht_image
    python benchmarks/pusht_table.py --episodes 1 --shards 1 --cells state_async_k10 --out /tmp/pt  # plumbing
    python benchmarks/pusht_table.py --dry-run                         # the commands, nothing run

Writes OUT/pusht_table.json (every cell: summary, per-episode rows, errors, commands) and OUT/pusht_table.md
after every batch, so an interrupted run keeps what it measured. Cells already in OUT/pusht_table.json from
an earlier run are kept (and replaced when run again) unless ``--fresh``. Episodes run in real time: the CPU
model and the load average before and after every cell are recorded beside the figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"state": ROOT / "examples" / "pusht_state.yaml", "image": ROOT / "examples" / "pusht.yaml"}
FIRST_SEED = 100000  # held out: `edgedp record --task pusht` uses gym-pusht seeds from 0
SCHEMA = 1


@dataclass(frozen=True)
class Cell:
    """One row of the table: what `edgedp eval` runs, and with which overrides of the policy's config."""

    name: str
    label: str
    policy: str                      # state | image: which example config (CONFIGS)
    episodes: int
    sync: bool = False
    latency_ms: float = 0.0
    join: Optional[str] = None       # safety.join (crossfade | ensemble | inpaint); None: the config's
    steps: Optional[int] = None      # denoising steps K; None: the config's (state: 4, image: the checkpoint's 10)
    sampler: Optional[str] = None    # policy.sampler (ddim | dpmsolver++ ...); None: the checkpoint's
    warm_start: bool = False         # policy.warm_start: each chunk starts from the previous one
    timesteps: Optional[object] = None  # policy.timesteps (a descending list or 'logsnr'); None: the spacing
    inpaint_form: Optional[str] = None  # safety.inpaint_form (guided | replace); None: the config's
    inpaint_overlap: Optional[str] = None  # safety.inpaint_overlap (soft | none); None: the config's
    backend: Optional[str] = None    # None: the config's (eager)
    precision: Optional[str] = None  # None: the config's (fp32)
    checkpoint: Optional[str] = None  # None: the config's (or --state-/--image-checkpoint)
    headline: bool = False           # gets --video


CELLS = [
    # examples/pusht_state.yaml as shipped (since round 5: DPM-Solver++ K=4 at log-SNR timesteps); no overrides
    Cell("state_shipped", "state, async, as shipped", "state", 50, headline=True),
    Cell("image_async_k10", "image, async, K=10", "image", 50, headline=True, steps=10),
    # round 6: the round 3 rows (sync, +100 ms, the fastest CPU backend) again with the action timing as recorded
    # and the shipped sampler; +200 ms with it is state_dpm_k4_logsnr_200ms below
    Cell("state_sync", "state, sync, as shipped", "state", 20, sync=True),
    Cell("state_100ms", "state, async, +100 ms, as shipped", "state", 20, latency_ms=100),
    Cell("state_ortloop_shipped", "state, async, onnxruntime-loop fp32, as shipped", "state", 20,
         backend="onnxruntime-loop", precision="fp32"),
    Cell("image_dpm_k4_logsnr", "image, async, dpmsolver++ K=4, log-SNR timesteps", "image", 20,
         sampler="dpmsolver++", steps=4, timesteps="logsnr"),
    Cell("state_async_k10", "state, async, K=10", "state", 50, headline=True, sampler="ddim", steps=10),
    Cell("state_sync_k10", "state, sync, K=10", "state", 20, sync=True, sampler="ddim", steps=10),
    Cell("state_async_100ms", "state, async, +100 ms", "state", 20, latency_ms=100, sampler="ddim", steps=10),
    Cell("state_async_200ms", "state, async, +200 ms", "state", 20, latency_ms=200, sampler="ddim", steps=10),
    Cell("state_async_200ms_inpaint", "state, async, +200 ms, inpaint join", "state", 20, latency_ms=200,
         join="inpaint", sampler="ddim", steps=10),
    Cell("state_dpm_k4", "state, async, dpmsolver++ K=4", "state", 20, sampler="dpmsolver++", steps=4),
    # issue 15: inpainting without added latency, and the sampler-vs-K cells with warm start
    Cell("state_async_inpaint", "state, async, inpaint join", "state", 20, join="inpaint", sampler="ddim", steps=10),
    Cell("state_async_inpaint_replace", "state, async, inpaint join (replace form)", "state", 20, join="inpaint",
         inpaint_form="replace", sampler="ddim", steps=10),
    # issue 15: guided inpainting with only the decided steps guided (no soft tail over the old chunk's predictions)
    Cell("state_async_inpaint_none", "state, async, inpaint join, no soft overlap", "state", 20, join="inpaint",
         sampler="ddim", steps=10, inpaint_overlap="none"),
    Cell("state_async_200ms_inpaint_none", "state, async, +200 ms, inpaint join, no soft overlap", "state", 20,
         latency_ms=200, join="inpaint", sampler="ddim", steps=10, inpaint_overlap="none"),
    Cell("state_ddim_k4", "state, async, ddim K=4", "state", 20, sampler="ddim", steps=4),
    Cell("state_ddim_k10_warm", "state, async, ddim K=10, warm start", "state", 20, sampler="ddim", steps=10,
         warm_start=True),
    Cell("state_dpm_k4_warm", "state, async, dpmsolver++ K=4, warm start", "state", 20, sampler="dpmsolver++",
         steps=4, warm_start=True),
    Cell("state_dpm_k4_logsnr", "state, async, dpmsolver++ K=4, log-SNR timesteps", "state", 20,
         sampler="dpmsolver++", steps=4, timesteps="logsnr"),
    Cell("state_dpm_k4_logsnr_warm", "state, async, dpmsolver++ K=4, log-SNR timesteps, warm start", "state", 20,
         sampler="dpmsolver++", steps=4, timesteps="logsnr", warm_start=True),
    Cell("state_unipc_k4_logsnr", "state, async, unipc K=4, log-SNR timesteps", "state", 20,
         sampler="unipc", steps=4, timesteps="logsnr"),
    Cell("state_dpm_k4_logsnr_200ms", "state, async, +200 ms, dpmsolver++ K=4, log-SNR timesteps", "state", 20,
         latency_ms=200, sampler="dpmsolver++", steps=4, timesteps="logsnr"),
    # README / docs/compile.md: at the U-Net 64/128/256 size onnxruntime-loop fp32 is the fastest CPU backend
    # (int8 about equal); the state checkpoint (no image) builds with it (the encoder graph is the state path).
    Cell("state_ortloop", "state, async, K=10, onnxruntime-loop fp32", "state", 20,
         backend="onnxruntime-loop", precision="fp32", sampler="ddim", steps=10),
]


# ------------------------------------------------------------------------------- pure parts (tested)
def shard_seeds(first: int, episodes: int, shards: int) -> list[list[int]]:
    """Disjoint contiguous seed ranges covering first..first+episodes-1, sizes differing by at most one; the
    same episodes and shards give the same ranges in every cell. Empty ranges are dropped."""
    if episodes < 0 or shards < 1:
        raise ValueError(f"episodes must be >= 0 and shards >= 1 (got {episodes}, {shards})")
    base, extra = divmod(episodes, shards)
    out, s = [], first
    for i in range(shards):
        n = base + (1 if i < extra else 0)
        if n:
            out.append(list(range(s, s + n)))
        s += n
    return out


def batches(seeds: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive runs of at most ``size`` seeds (one `edgedp eval --seed FIRST --episodes N` each)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1 (got {size})")
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]


def episode_rows(doc: dict) -> list[dict]:
    """The per-episode rows of one `edgedp eval --json` document (one condition per invocation here)."""
    runs = doc.get("runs")
    if not isinstance(runs, list) or len(runs) != 1 or "per_episode" not in runs[0]:
        raise ValueError("expected an `edgedp eval` document with exactly one run and its per_episode rows")
    return list(runs[0]["per_episode"])


def merge_rows(parts: Sequence[Sequence[dict]]) -> list[dict]:
    """Every episode of every shard/batch, ordered by seed; a seed seen twice is an error (shards overlap)."""
    out: dict[int, dict] = {}
    for part in parts:
        for row in part:
            seed = int(row["seed"])
            if seed in out:
                raise ValueError(f"seed {seed} appears in two shards: the seed ranges overlap")
            out[seed] = dict(row)
    return [out[s] for s in sorted(out)]


def summarize_cell(rows: Sequence[dict], errors: Sequence[dict] = (), expected: Sequence[int] = ()) -> dict:
    """The cell's figures from its per-episode rows, through edgedp's own summary (report.summarize: success
    rate, Wilson interval, time to success, join jumps, inference p50, watchdog stops) so that the table and
    `edgedp eval` compute them identically. Runtime errors (``errors``: seeds that failed twice) are not
    episodes; ``missing`` lists expected seeds that have neither a row nor an error (an interrupted cell)."""
    from edgedp.evaluation.episodes import EpisodeResult
    from edgedp.evaluation.report import summarize

    names = {f.name for f in dataclasses.fields(EpisodeResult)}
    results = [EpisodeResult(**{k: v for k, v in r.items() if k in names}) for r in rows]
    s = summarize(results, {}, per_episode=False)
    cov = s.get("max_coverage") or {}
    seen = {int(r["seed"]) for r in rows} | {int(e["seed"]) for e in errors}
    return {
        "episodes": s["episodes"], "successes": s["successes"], "success_rate": s["success_rate"],
        "success_ci95": s["success_ci95"],
        "mean_max_coverage": cov.get("mean"),
        "time_to_success_median_s": s["time_to_success"]["median"],
        "time_to_success_mean_s": s["time_to_success"]["mean"],
        "join_jump_max_position_rad": s["join_jump_max"]["position_rad"],
        "join_jump_max_velocity_rad_s": s["join_jump_max"]["velocity_rad_s"],
        "inference_ms_p50": s["inference_ms_p50"],
        "dropped_steps": s["dropped_steps"],
        "watchdog_stops": int(s["watchdog_stops"]),
        "errors": len(errors),
        "missing_seeds": sorted(set(int(x) for x in expected) - seen),
    }


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else fmt.format(x)


def markdown(doc: dict) -> str:
    """The table (one row per cell, in the cell list's order), the machine, and the commands."""
    run = doc.get("run", {})
    lines = [
        f"Push-T through the full runtime (`edgedp eval`), gym-pusht held-out seeds from {run.get('first_seed')}, "
        f"{run.get('episode_timeout_s') or 30:g} s per episode, {run.get('shards')} parallel shards per cell.",
        f"CPU {run.get('cpu')}, {run.get('cpu_count')} cores, torch {run.get('torch')}; started "
        f"{run.get('started')}.", "",
        f"Command: `{run.get('command')}`", "",
        "| cell | policy | planning | +latency | join | sampler, K | backend / precision | episodes | "
        "success (95 % Wilson CI) | mean max coverage | time to success median | join jump max (rad / rad/s) | "
        "inference p50 | dropped steps | watchdog stops / errors | wall | load avg start → end | measured |",
        "|" + "---|" * 18,
    ]
    for c in doc.get("cells", []):
        s, k = c.get("summary") or {}, c.get("cell", {})
        status = c.get("status", "")
        note = "" if status == "done" else f" ({status})"
        if not s:
            lines.append(f"| {k.get('name')}{note} | {c.get('error', '')} |" + " |" * 16)
            continue
        ci = s["success_ci95"]
        timesteps = f", timesteps {c['timesteps']}" if c.get("timesteps") else ""
        lines.append(
            f"| {k.get('name')}{note} | {k.get('policy')} ({Path(str(c.get('checkpoint'))).name}) | "
            f"{'sync' if k.get('sync') else 'async'} | {k.get('latency_ms', 0):g} ms | {c.get('join')} | "
            f"{c.get('sampler')}, {c.get('steps') or k.get('steps') or 'K of the checkpoint'}{timesteps}{', warm start' if k.get('warm_start') else ''} | {c.get('backend')} / {c.get('precision')} | {s['episodes']} | "
            f"{s['success_rate'] * 100:.0f} % ({s['successes']}/{s['episodes']}; {ci[0] * 100:.0f}–{ci[1] * 100:.0f} %) | "
            f"{_f(s['mean_max_coverage'], '{:.3f}')} | {_f(s['time_to_success_median_s'], '{:.1f} s')} | "
            f"{s['join_jump_max_position_rad']:.4f} / {s['join_jump_max_velocity_rad_s']:.3f} | "
            f"{_f(s['inference_ms_p50'], '{:.0f} ms')} | {s['dropped_steps']} | "
            f"{s['watchdog_stops']} / {s['errors']} | {_f(c.get('wall_s'), '{:.0f} s')} | "
            f"{_load(c.get('load_start'))} → {_load(c.get('load_end'))} | {c.get('started', '')} |")
    errs = [(c["cell"]["name"], e) for c in doc.get("cells", []) for e in c.get("errors", [])]
    if errs:
        lines += ["", "Runtime errors (seeds that failed twice, left out of their cell's episodes):", ""]
        lines += [f"- {name}, seed {e['seed']}: {e['error']}" for name, e in errs]
    lines += ["", "Each cell's first `edgedp eval` (its other batches and shards differ in --seed, --episodes "
              "and --json only; all of them are in pusht_table.json):", ""]
    for c in doc.get("cells", []):
        if c.get("commands"):
            lines.append(f"- {c['cell']['name']}: `{c['commands'][0]}`")
    return "\n".join(lines) + "\n"


def _load(v: Any) -> str:
    return "–" if not v else "/".join(f"{x:.1f}" for x in v)


# ---------------------------------------------------------------------------------------- planning
@dataclass
class CellPlan:
    cell: Cell
    config: Path          # what `edgedp eval` reads (the example, or the derived copy)
    derived: Optional[dict]  # the derived config's content, when one is needed
    checkpoint: str       # absolute path (or preset:NAME)
    join: str
    inpaint_form: Optional[str]
    inpaint_overlap: Optional[str]  # safety.inpaint_overlap with join inpaint, else None
    sampler: str
    timesteps: Any        # policy.timesteps after the cell's overrides (None, 'logsnr' or a list)
    steps: Optional[int]  # policy.steps after the cell's overrides (None: the checkpoint's K)
    backend: str
    precision: str
    cache_dir: Optional[str]
    video: Optional[Path]
    dir: Path


def _absolute(raw: dict, base: Path) -> dict:
    """The config's relative paths made absolute (the keys config._resolve_paths resolves), so that a copy of
    it anywhere reads the same files."""
    import copy

    out = copy.deepcopy(raw)

    def fix(section: Optional[dict], key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            p = Path(section[key]).expanduser()
            if not (key == "checkpoint" and section[key].startswith("preset:")) and not p.is_absolute():
                section[key] = str((base / p).resolve())

    pol = out.get("policy")
    fix(pol, "checkpoint")
    fix(pol, "cache_dir")
    if isinstance(pol, dict):
        fix(pol.get("remote"), "token_file")
    fix(out.get("robot"), "calibration_file")
    fix(out.get("robot"), "time_offset_file")
    fix(out.get("telemetry"), "path")
    for cam in out.get("cameras") or []:
        fix(cam, "file")
    return out


def plan_cell(cell: Cell, out: Path, checkpoints: dict[str, Optional[str]], video: Optional[Path],
              write: bool = True) -> CellPlan:
    """Resolve a cell against its config; writes the derived config (unless ``write`` is false). Every
    problem (bad path, unknown join or sampler) is an exception with one line, before anything runs."""
    from edgedp.commands.eval import apply_overrides
    from edgedp.config import load_config, parse_config
    from models.safe_yaml import read_yaml_file

    src = CONFIGS[cell.policy]
    cfg = load_config(src)
    ckpt = checkpoints.get(cell.policy) or cell.checkpoint
    apply_overrides(cfg, ckpt, cell.backend, cell.precision, cell.steps)
    cdir = out / "cells" / cell.name
    derived = None
    config = src
    if (cell.join is not None or cell.sampler is not None or cell.warm_start or cell.inpaint_form or cell.timesteps
            or cell.inpaint_overlap):
        derived = _absolute(read_yaml_file(src), src.resolve().parent)
        derived.setdefault("policy", {})
        derived.setdefault("safety", {})
        if cell.join is not None:
            derived["safety"]["join"] = cell.join
        if cell.sampler is not None:
            derived["policy"]["sampler"] = cell.sampler
            if cell.sampler in ("ddim", "ddpm"):  # explicit timesteps (the state example's) are for the solvers only
                derived["policy"].pop("timesteps", None)
        if cell.warm_start:
            derived["policy"]["warm_start"] = True
        if cell.inpaint_form:
            derived["safety"]["inpaint_form"] = cell.inpaint_form
        if cell.inpaint_overlap:
            derived["safety"]["inpaint_overlap"] = cell.inpaint_overlap
        if cell.timesteps is not None:  # K: the cell's steps, which eval's --steps sets
            derived["policy"]["timesteps"] = cell.timesteps
            if cell.steps is not None:
                derived["policy"]["steps"] = cell.steps
        check = parse_config(json.loads(json.dumps(derived)), base=cdir)  # validates join/sampler as eval will
        if os.path.realpath(check.policy.checkpoint) != os.path.realpath(load_config(src).policy.checkpoint):
            raise ValueError(f"{cell.name}: the derived config reads checkpoint {check.policy.checkpoint}, "
                             f"not the original's")
        cfg.safety.join, cfg.policy.sampler = check.safety.join, check.policy.sampler
        cfg.safety.inpaint_form = check.safety.inpaint_form
        cfg.safety.inpaint_overlap = check.safety.inpaint_overlap
        cfg.policy.timesteps = check.policy.timesteps
        config = cdir / "config.yaml"
        if write:
            import yaml

            cdir.mkdir(parents=True, exist_ok=True)
            what = ([f"safety.join {cell.join}"] * bool(cell.join) + [f"policy.sampler {cell.sampler}"] * bool(cell.sampler)
                    + ["policy.warm_start true"] * cell.warm_start
                    + [f"safety.inpaint_form {cell.inpaint_form}"] * bool(cell.inpaint_form)
                    + [f"safety.inpaint_overlap {cell.inpaint_overlap}"] * bool(cell.inpaint_overlap)
                    + [f"policy.timesteps {cell.timesteps}"] * (cell.timesteps is not None))
            header = (f"# derived by benchmarks/pusht_table.py from {src} for cell {cell.name}: "
                      f"{', '.join(what)}; paths made absolute\n")
            config.write_text(header + yaml.safe_dump(derived, sort_keys=False))
    ck = str(cfg.policy.checkpoint)
    ck = ck if ck.startswith("preset:") else os.path.abspath(ck)  # examples/../models/... -> models/...
    return CellPlan(cell=cell, config=config, derived=derived, checkpoint=ck,
                    join=cfg.safety.join, inpaint_form=cfg.safety.inpaint_form if cfg.safety.join == "inpaint" else None,
                    inpaint_overlap=cfg.safety.inpaint_overlap if cfg.safety.join == "inpaint" else None,
                    sampler=cfg.policy.sampler or "checkpoint's", timesteps=cfg.policy.timesteps,
                    steps=cfg.policy.steps, backend=cfg.policy.backend,
                    precision=cfg.policy.precision,
                    cache_dir=str(cfg.policy.cache_dir) if cfg.policy.cache_dir else None,
                    video=(video / cell.name) if (video is not None and cell.headline) else None,
                    dir=cdir)


def eval_command(plan: CellPlan, seeds: Sequence[int], json_path: Path, timeout: Optional[float]) -> list[str]:
    c = plan.cell
    cmd = [sys.executable, "-m", "edgedp.cli", "eval", str(plan.config), "--episodes", str(len(seeds)),
           "--seed", str(seeds[0]), "--json", str(json_path), "--latency-ms", f"{c.latency_ms:g}",
           "--checkpoint", plan.checkpoint]
    if c.steps is not None:  # else the config's K (the state example's 4 with its log-SNR timesteps)
        cmd += ["--steps", str(c.steps)]
    if c.sync:
        cmd.append("--sync")
    if c.backend:
        cmd += ["--backend", c.backend]
    if c.precision:
        cmd += ["--precision", c.precision]
    if timeout is not None:
        cmd += ["--episode-timeout", f"{timeout:g}"]
    if plan.video is not None:
        cmd += ["--video", str(plan.video)]
    return cmd


def prebuild_command(plan: CellPlan) -> Optional[list[str]]:
    """`edgedp compile` for a compiled backend, once before the shards (who then hit the cache): the same sampler,
    timesteps and K the cell's config asks for, so the shards find exactly this build."""
    if plan.backend == "eager":
        return None
    cmd = [sys.executable, "-m", "edgedp.cli", "compile", plan.checkpoint, "--backend", plan.backend,
           "--precision", plan.precision]
    if plan.sampler != "checkpoint's":
        cmd += ["--sampler", plan.sampler]
    if isinstance(plan.timesteps, list):  # a list sets K itself
        cmd += ["--timesteps", ",".join(str(t) for t in plan.timesteps)]
    else:
        cmd += ["--steps", str(plan.steps)] * (plan.steps is not None)
        cmd += ["--timesteps", plan.timesteps] * (plan.timesteps is not None)
    return cmd + (["--out", plan.cache_dir] if plan.cache_dir else [])


def show(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(x) for x in cmd)


# ------------------------------------------------------------------------------------------ running
class Runner:
    """Child processes of the current cell; on Ctrl-C / SIGTERM they get SIGTERM (edgedp exits 143, closing
    its emulator) and no new one starts."""

    def __init__(self):
        self.stop = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, cmd: Sequence[str], log: Path) -> tuple[int, str]:
        """(exit code, the last lines of its output); appends the output to ``log``."""
        if self.stop.is_set():
            return 130, "not started: interrupted"
        with open(log, "a") as fh:
            fh.write(f"\n$ {show(cmd)}\n")
            fh.flush()
            with self._lock:
                p = subprocess.Popen(list(cmd), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # Ctrl-C reaches it through terminate_all only
                self._procs.add(p)
            try:
                rc = p.wait()
            finally:
                with self._lock:
                    self._procs.discard(p)
        text = log.read_text(errors="replace").rstrip().splitlines()
        return rc, "\n".join(text[-12:])

    def terminate_all(self) -> None:
        self.stop.set()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _error_line(tail: str) -> str:
    """The line that says why: edgedp's own 'edgedp eval: ...' line, else a traceback's last line."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("edgedp eval:"):
            return ln
    return lines[-1] if lines else "no output"


def run_shard(plan: CellPlan, shard: int, seeds: list[int], batch: int, timeout: Optional[float], runner: Runner,
              record: Callable[[list[dict], list[dict]], None], log: Callable[[str], None]) -> None:
    """One shard's seeds, batch by batch; each batch's rows (or its seeds' errors) go to ``record`` at once."""
    slog = plan.dir / f"shard{shard}.log"
    consecutive_failures = 0
    for b in batches(seeds, batch):
        jpath = plan.dir / f"shard{shard}_{b[0]}-{b[-1]}.json"
        jpath.unlink(missing_ok=True)  # never read a previous run's document for this batch
        cmd = eval_command(plan, b, jpath, timeout)
        t0 = time.monotonic()
        rc, tail = runner.run(cmd, slog)
        if rc == 0 and jpath.is_file():
            rows = episode_rows(json.loads(jpath.read_text()))
            record(rows, [])
            consecutive_failures = 0
            log(f"  [{plan.cell.name}] shard {shard} seeds {b[0]}–{b[-1]}: "
                f"{sum(r['success'] for r in rows)}/{len(rows)} success, {time.monotonic() - t0:.0f} s")
            continue
        if rc in (130, 143) or runner.stop.is_set():
            return
        if rc == 2:  # edgedp's one-line UserError: the same for every seed (config, checkpoint, backend)
            raise RuntimeError(_error_line(tail))
        log(f"  [{plan.cell.name}] shard {shard} seeds {b[0]}–{b[-1]}: exit {rc} ({_error_line(tail)}); "
            f"re-running them one by one")
        for seed in b:
            for attempt in (1, 2):
                jpath = plan.dir / f"shard{shard}_{seed}-{seed}.json"
                jpath.unlink(missing_ok=True)
                cmd = eval_command(plan, [seed], jpath, timeout)
                rc, tail = runner.run(cmd, slog)
                if rc in (130, 143) or runner.stop.is_set():
                    return
                if rc == 0 and jpath.is_file():
                    record(episode_rows(json.loads(jpath.read_text())), [])
                    consecutive_failures = 0
                    break
                if rc == 2:
                    raise RuntimeError(_error_line(tail))
                if attempt == 2:
                    err = {"seed": seed, "error": f"exit {rc}: {_error_line(tail)}"}
                    record([], [err])
                    consecutive_failures += 1
                    log(f"  [{plan.cell.name}] shard {shard} seed {seed}: failed twice: {err['error']}")
            if consecutive_failures >= 3:
                raise RuntimeError(f"shard {shard}: three seeds in a row failed twice; last: {_error_line(tail)}")


def planned_commands(plan: CellPlan, seeds_by_shard: list[list[int]], batch: int, timeout: Optional[float],
                     first_shard: int = 0) -> list[list[str]]:
    """Every `edgedp eval` the cell runs when nothing fails, shard by shard (the shards run in parallel)."""
    return [eval_command(plan, b, plan.dir / f"shard{i}_{b[0]}-{b[-1]}.json", timeout)
            for i, seeds in enumerate(seeds_by_shard, first_shard) for b in batches(seeds, batch)]


def run_cell(plan: CellPlan, seeds_by_shard: list[list[int]], args, runner: Runner, entry: dict,
             save: Callable[[], None], log: Callable[[str], None]) -> None:
    """All shards of one cell in parallel; ``entry`` (the cell's part of the document) is updated and saved
    after every batch."""
    lock = threading.Lock()
    parts: list[list[dict]] = []
    errors: list[dict] = []
    expected = [s for seeds in seeds_by_shard for s in seeds]

    def record(rows: list[dict], errs: list[dict]) -> None:
        with lock:
            parts.append(rows)
            errors.extend(errs)
            entry["per_episode"] = merge_rows(parts)
            entry["errors"] = sorted(errors, key=lambda e: e["seed"])
            entry["summary"] = summarize_cell(entry["per_episode"], entry["errors"], expected)
            entry["load_end"] = [round(x, 2) for x in os.getloadavg()]
            entry["wall_s"] = round(time.monotonic() - entry["_t0"], 1)
            save()

    plan.dir.mkdir(parents=True, exist_ok=True)
    for name in (f"shard{i}.log" for i in range(len(seeds_by_shard))):
        (plan.dir / name).unlink(missing_ok=True)
    pre = prebuild_command(plan)
    if pre is not None:
        log(f"  [{plan.cell.name}] building {plan.backend}/{plan.precision} K={plan.steps or 'checkpoint'} once: {show(pre)}")
        rc, tail = runner.run(pre, plan.dir / "compile.log")
        if rc != 0:
            raise RuntimeError(f"edgedp compile failed (exit {rc}): {_error_line(tail)}")
    failures: list[BaseException] = []

    def shard_main(i: int, seeds: list[int]) -> None:
        try:
            run_shard(plan, i, seeds, args.batch, args.episode_timeout, runner, record, log)
        except BaseException as exc:  # noqa: BLE001 - reported with the cell
            failures.append(exc)

    threads = [threading.Thread(target=shard_main, args=(i, s), name=f"shard{i}", daemon=True)
               for i, s in enumerate(seeds_by_shard)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)  # a short wait, so Ctrl-C reaches the main thread
    if failures:
        raise RuntimeError("; ".join(str(f) for f in failures))


# -------------------------------------------------------------------------------------------- main
def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001
        return "unknown"


def _fail(message: str) -> None:
    """Bad input: one line and exit 2, as edgedp's own commands do."""
    print(f"pusht_table: {message}", file=sys.stderr)
    raise SystemExit(2)


def _select(names: Optional[str]) -> list[Cell]:
    if not names:
        return list(CELLS)
    known = {c.name: c for c in CELLS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        _fail(f"unknown cell(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in wanted]


def _load_existing(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [c for c in doc.get("cells", []) if isinstance(c, dict) and "cell" in c]


def _order(cells: list[dict]) -> list[dict]:
    rank = {c.name: i for i, c in enumerate(CELLS)}
    return sorted(cells, key=lambda c: rank.get(c["cell"].get("name"), len(rank)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default=None, help=f"comma-separated cell names (default all, in order: "
                                                  f"{', '.join(c.name for c in CELLS)})")
    ap.add_argument("--episodes", type=int, default=None, help="episodes per cell for every cell (default: each "
                                                                 "cell's own, 50 headline / 20 others)")
    ap.add_argument("--shards", type=int, default=2, help="parallel `edgedp eval` processes per cell (default 2)")
    ap.add_argument("--batch", type=int, default=5,
                    help="episodes per `edgedp eval` invocation inside a shard (default 5): a runtime error "
                         "loses at most this many episodes, which are then re-run one by one")
    ap.add_argument("--seed", type=int, default=FIRST_SEED, help=f"first gym-pusht seed (default {FIRST_SEED})")
    ap.add_argument("--episode-timeout", type=float, default=None, help="seconds per episode (default: eval's, 30)")
    ap.add_argument("--state-checkpoint", default=None, help="checkpoint for every state cell (default: "
                                                             "examples/pusht_state.yaml's)")
    ap.add_argument("--image-checkpoint", default=None, help="checkpoint for every image cell (default: "
                                                             "examples/pusht.yaml's)")
    ap.add_argument("--video", type=Path, default=None, metavar="DIR",
                    help="pass --video DIR/CELL to the headline cells (one mp4 per episode; a state config films the scene render)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pusht")
    ap.add_argument("--fresh", action="store_true", help="drop cells an earlier run left in OUT/pusht_table.json")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing, write nothing")
    args = ap.parse_args(argv)
    if args.shards < 1 or args.batch < 1 or (args.episodes is not None and args.episodes < 1):
        _fail("--shards, --batch and --episodes must be at least 1")
    cells = _select(args.cells)
    if args.episodes is not None:
        cells = [dataclasses.replace(c, episodes=args.episodes) for c in cells]
    checkpoints = {"state": args.state_checkpoint, "image": args.image_checkpoint}
    out = args.out.resolve()
    from edgedp.errors import UserError

    plans = []
    for c in cells:  # every cell resolved (paths, join, sampler, backend) before the first episode
        try:
            plans.append(plan_cell(c, out, checkpoints, args.video.resolve() if args.video else None,
                                   write=not args.dry_run))
        except (UserError, ValueError) as exc:
            _fail(f"cell {c.name}: {str(exc).splitlines()[0]}")
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.dry_run:
        for p in plans:
            seeds = shard_seeds(args.seed, p.cell.episodes, args.shards)
            log(f"# {p.cell.name}: {p.cell.label}; {p.cell.episodes} episodes, shards "
                + ", ".join(f"{s[0]}–{s[-1]}" for s in seeds))
            if p.derived is not None:
                log(f"#   derived config {p.config}: safety.join={p.join} policy.sampler={p.sampler}"
                    + ("" if p.cell.timesteps is None else f" policy.timesteps={p.cell.timesteps}")
                    + ("" if p.inpaint_form is None else f" safety.inpaint_form={p.inpaint_form}")
                    + ("" if p.inpaint_overlap is None else f" safety.inpaint_overlap={p.inpaint_overlap}"))
            pre = prebuild_command(p)
            if pre:
                log(show(pre))
            for i, s in enumerate(seeds):
                log(f"#   shard {i} (in parallel with the other shards; its batches one after another):")
                for cmd in planned_commands(p, [s], args.batch, args.episode_timeout, first_shard=i):
                    log(show(cmd))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    from edgedp.host_info import cpu_model
    from firmware_bridge.atomic_file import atomic_write_text

    doc = {"schema": SCHEMA, "tool": "benchmarks/pusht_table.py",
           "run": {"command": show(["python", *sys.argv]) if argv is None else show(["pusht_table.py", *argv]),
                   "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": _torch_version(),
                   "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "first_seed": args.seed,
                   "shards": args.shards, "batch": args.batch, "episode_timeout_s": args.episode_timeout},
           "cells": [] if args.fresh else [c for c in _load_existing(out / "pusht_table.json")
                                           if c["cell"]["name"] not in {p.cell.name for p in plans}]}
    save_lock = threading.Lock()

    def save() -> None:
        with save_lock:
            clean = dict(doc, cells=_order([{k: v for k, v in c.items() if not k.startswith("_")}
                                            for c in doc["cells"]]))
            atomic_write_text(out / "pusht_table.json", json.dumps(clean, indent=1) + "\n")
            atomic_write_text(out / "pusht_table.md", markdown(clean))

    runner = Runner()

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # `timeout`, a closed session: keep what was measured, as Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    code = 0
    try:
        for p in plans:
            seeds = shard_seeds(args.seed, p.cell.episodes, args.shards)
            entry = {"cell": dataclasses.asdict(p.cell), "status": "running", "checkpoint": p.checkpoint,
                     "config": str(p.config), "join": p.join + (f" ({p.inpaint_form}"
                                                          + (", no soft overlap" if p.inpaint_overlap == "none" else "")
                                                          + ")" if p.inpaint_form else ""),
                     "sampler": p.sampler, "steps": p.steps, "timesteps": p.timesteps,
                     "backend": p.backend, "precision": p.precision,
                     "seeds": [s for ss in seeds for s in ss], "shards": [[s[0], s[-1]] for s in seeds],
                     "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load_start": [round(x, 2) for x in os.getloadavg()], "load_end": None, "wall_s": None,
                     "invocation": doc["run"]["command"], "cpu": doc["run"]["cpu"], "torch": doc["run"]["torch"],
                     "commands": [show(c) for c in planned_commands(p, seeds, args.batch, args.episode_timeout)],
                     "per_episode": [], "errors": [], "summary": None, "_t0": time.monotonic()}
            doc["cells"].append(entry)
            save()
            log(f"[{p.cell.name}] {p.cell.label}: {p.cell.episodes} episodes in {len(seeds)} shard(s) "
                f"(load average {entry['load_start']})")
            try:
                run_cell(p, seeds, args, runner, entry, save, log)
                entry["status"] = "done"
            except KeyboardInterrupt:
                runner.terminate_all()
                entry["status"] = "interrupted"
                code = 130
            except RuntimeError as exc:
                entry["status"] = "failed"
                entry["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log(f"  [{p.cell.name}] failed: {entry['error']}")
                code = 1
            if runner.stop.is_set() and entry["status"] == "done":
                entry["status"] = "interrupted"
            entry["load_end"] = [round(x, 2) for x in os.getloadavg()]
            entry["wall_s"] = round(time.monotonic() - entry["_t0"], 1)
            save()
            s = entry["summary"]
            if s:
                log(f"  [{p.cell.name}] {entry['status']}: {s['successes']}/{s['episodes']} success, mean max coverage "
                    f"{_f(s['mean_max_coverage'], '{:.3f}')}, {entry['wall_s']:.0f} s")
            if code == 130:
                log("interrupted: what was measured is in " + str(out / "pusht_table.json"))
                break
    except KeyboardInterrupt:  # between two cells: nothing is running, the last cell is already saved
        runner.terminate_all()
        for c in doc["cells"]:
            if c.get("status") == "running":
                c["status"] = "interrupted"
        save()
        code = 130
    print(markdown(json.loads((out / "pusht_table.json").read_text())))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
