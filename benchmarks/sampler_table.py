"""Joins against latency, and samplers against K: closed-loop episodes through the full runtime (`edgedp eval`).

Two tables, every cell run by `edgedp eval`'s own episode runner (EvalSession: emulated servos, virtual camera,
planner and servo loop in real time), same scene seeds in every cell:

  joins:    crossfade, ensemble, inpaint (replace and guided) x injected latency (default 0/100/200/300 ms), with
            the config's own sampler. Columns: success, time to success, the largest join jump (position, and
            velocity over one servo period) and the largest step inside any chunk (as a velocity), the yardstick
            for "seamless".
  samplers: ddim, ddpm, dpmsolver++, unipc x K, each with and without warm start (0 ms injected latency,
            the config's join). Columns: success, time to success, chunk latency (planner: observation to
            publish, median) and the sampler alone (median of repeats of the K-step loop, measured in-process
            right after the episodes, same machine).

    python benchmarks/sampler_table.py --episodes 10                      # both tables, examples/sim.yaml
    python benchmarks/sampler_table.py --only joins --latencies 0,200 --episodes 4
    python benchmarks/sampler_table.py --config examples/pusht.yaml --only samplers --ks 4,10

  timing:   the K-step loop alone for every sampler row, interleaved rounds, median (no episodes).
  boundary: offline, no episodes: the largest step inside the executed slice of a chunk inpainted onto a
            previous one (replace vs guided vs unconditioned), on simulated-scene observations.

Writes benchmarks/results/sampler_table.json (every cell with its per-episode rows) and sampler_table.md.
Episodes run in real time: on a shared machine timings (and so success under latency) move with the load;
the CPU model and the load average are recorded with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgedp.config import load_config  # noqa: E402
from edgedp.evaluation.episodes import Condition, EvalSession  # noqa: E402
from edgedp.evaluation.report import wilson_interval  # noqa: E402
from edgedp.host_info import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JOINS = [("crossfade", None), ("ensemble", None), ("inpaint", "replace"), ("inpaint", "guided")]
SAMPLERS = ["ddim", "ddpm", "dpmsolver++", "unipc"]


def run_session(cfg, latencies: list[float], seeds: list[int], timeout: float, log) -> list[dict]:
    """One assembled runtime (policy + sampler built once); one row per latency."""
    rows = []
    session = EvalSession(cfg)
    with session:
        for lat in latencies:
            eps, chunk_steps, direct, errors = [], [], [], []
            for i, seed in enumerate(seeds):
                r = _episode(session, i, seed, lat, timeout, errors, log)
                if r is None:
                    continue
                joins = session.last_telemetry.servo.get("joins", []) if session.last_telemetry else []
                chunk_steps.append(max((j.get("chunk_velocity", 0.0) for j in joins), default=0.0))
                direct.append(max((j.get("direct_velocity_jump", 0.0) for j in joins), default=0.0))
                eps.append(r)
            rows.append(_row(eps, chunk_steps, lat))
            rows[-1]["direct_join_velocity_rad_s"] = max(direct, default=0.0)  # inpaint: before any cross-fade
            rows[-1]["runtime_errors"] = errors
            log(f"    +{lat:g} ms: {rows[-1]['successes']}/{rows[-1]['episodes']} success, "
                f"join {rows[-1]['join_position_rad']:.4f} rad / {rows[-1]['join_velocity_rad_s']:.2f} rad/s, "
                f"in-chunk step {rows[-1]['chunk_step_rad_s']:.2f} rad/s, inference p50 {rows[-1]['inference_ms_p50']}")
    return rows


def _episode(session, i: int, seed: int, lat: float, timeout: float, errors: list, log, tries: int = 3):
    """One episode; a runtime fault of the shared machine (the emulated bus timing out under load) is retried
    and, if it persists, recorded and left out of the cell (its count is reported with the cell)."""
    for _ in range(tries):
        try:
            return session.run_episode(i, seed, Condition(latency_ms=lat), timeout)
        except Exception as exc:  # RuntimeError from the runtime, BusConfigError from homing
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            errors.append(msg)
            log(f"      retry after runtime error: {msg}")
    return None


def _row(eps, chunk_steps, lat) -> dict:
    wins = [e for e in eps if e.success]
    infer = [e.inference_ms_p50 for e in eps if e.inference_ms_p50 is not None]
    return {
        "latency_ms": lat, "episodes": len(eps), "successes": len(wins),
        "success_rate": len(wins) / len(eps) if eps else 0.0, "success_ci95": wilson_interval(len(wins), len(eps)),
        "time_to_success_s": round(statistics.mean(e.time_to_success_s for e in wins), 3) if wins else None,
        "join_position_rad": max((e.join_jump_position_rad for e in eps), default=0.0),
        "join_velocity_rad_s": max((e.join_jump_velocity_rad_s for e in eps), default=0.0),
        "chunk_step_rad_s": max(chunk_steps, default=0.0),
        "joins": int(sum(max(0, e.chunks - 1) for e in eps)),
        "cross_faded_joins": int(sum(e.inpaint_fallbacks for e in eps)),  # inpaint joins the runtime cross-faded
        "inference_ms_p50": round(statistics.median(infer), 1) if infer else None,
        "per_episode": [{"seed": e.seed, "success": e.success, "t": e.time_to_success_s,
                         "join_pos": e.join_jump_position_rad, "join_vel": e.join_jump_velocity_rad_s,
                         "inference_ms_p50": e.inference_ms_p50, "chunks": e.chunks} for e in eps],
    }


def sampler_ms(policy, warm: bool, repeats: int = 15) -> float:
    """Median time of the policy's K-step loop alone (eager, 1 observation), for the samplers table."""
    import torch

    g = torch.zeros((1, policy.global_cond_dim))
    x = policy.random_noise(1)
    kw = {"init": torch.zeros_like(x)} if warm else {}
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            policy.sample(g, x, **kw)
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 2)


def joins_table(args, log, save=lambda rows: None) -> list[dict]:
    out = []
    names = {(j if f is None else f"{j}-{f}"): (j, f) for j, f in JOINS}
    for join, form in [names[n] for n in args.joins]:  # in the order asked for
        cfg = load_config(args.config)
        cfg.safety.join = join
        if form:
            cfg.safety.inpaint_form = form
        cfg.telemetry.live = cfg.telemetry.plot = False
        label = join if form is None else f"{join} ({form})"
        log(f"[joins] {label}")
        for row in run_session(cfg, args.latencies, args.seeds, args.timeout, log):
            out.append({"join": label, **row})
        save(out)
    return out


def sampler_cells(args) -> list[tuple[str, int, bool]]:
    """(sampler, K, warm) rows: --cells 'ddim:10,dpmsolver++:4w,...' or every sampler x --ks (+ --warm-ks)."""
    if args.cells:
        out = []
        for item in args.cells.split(","):
            name, k = item.strip().rsplit(":", 1)
            out.append((name, int(k.rstrip("w")), k.endswith("w")))
        return out
    return [(s, k, w) for s in args.samplers for k in args.ks for w in (False, True) if not w or k in args.warm_ks]


def samplers_table(args, log, save=lambda rows: None) -> list[dict]:
    out = []
    for sampler, k, warm in sampler_cells(args):
        cfg = load_config(args.config)
        cfg.policy.sampler, cfg.policy.steps, cfg.policy.warm_start = sampler, k, warm
        cfg.policy.warm_start_level = args.warm_level
        cfg.telemetry.live = cfg.telemetry.plot = False
        label = f"{sampler} K={k}{' warm' if warm else ''}"
        log(f"[samplers] {label}")
        try:
            rows = run_session(cfg, [0.0], args.seeds, args.timeout, log)
        except Exception as exc:  # e.g. a K the spacing does not allow: say so in the table
            log(f"    skipped: {exc}")
            out.append({"sampler": sampler, "k": k, "warm": warm, "error": str(exc).splitlines()[0]})
            continue
        from edgedp.policy_loading import load_policy

        pol = load_policy(cfg.policy.checkpoint, "cpu", k, 0)
        pol.configure_sampler(sampler, args.warm_level if warm else None)
        with _threads(1):
            ms = sampler_ms(pol, warm)
        out.append({"sampler": sampler, "k": k, "warm": warm,
                    "denoiser_calls": pol.sampler.num_warm_steps if warm else pol.sampler.num_steps,
                    "sampler_ms_1thread": ms, **rows[0]})
        save(out)
    return out


def timing_table(args, log, rounds: int = 21) -> list[dict]:
    """The K-step loop alone for every sampler row, interleaved round by round (one call of each per round) so
    that a load change on a shared machine hits every row alike; median per row, 1 thread, eager fp32."""
    import torch

    from edgedp.policy_loading import load_policy

    cfg = load_config(args.config)
    cells = sampler_cells(args)
    pols = []
    for sampler, k, warm in cells:
        pol = load_policy(cfg.policy.checkpoint, "cpu", k, 0)
        pol.configure_sampler(sampler, args.warm_level if warm else None)
        pols.append(pol)
    g = torch.zeros((1, pols[0].global_cond_dim))
    x = pols[0].random_noise(1)
    times: list[list[float]] = [[] for _ in cells]
    with _threads(1), torch.inference_mode():
        for r in range(rounds + 2):
            for i, ((_, _, warm), pol) in enumerate(zip(cells, pols)):
                kw = {"init": torch.zeros_like(x)} if warm else {}
                t0 = time.perf_counter()
                pol.sample(g, x, **kw)
                if r >= 2:
                    times[i].append((time.perf_counter() - t0) * 1e3)
    out = []
    for (sampler, k, warm), pol, ts in zip(cells, pols, times):
        calls = pol.sampler.num_warm_steps if warm else pol.sampler.num_steps
        out.append({"sampler": sampler, "k": k, "warm": warm, "denoiser_calls": calls,
                    "sampler_ms_median": round(statistics.median(ts), 2), "rounds": rounds})
        log(f"[timing] {sampler} K={k}{' warm' if warm else ''}: {out[-1]['sampler_ms_median']} ms")
    return out


def boundary_table(args, log) -> list[dict]:
    """Offline: how much each inpainting form makes the new chunk step at the edge of its decided part.

    Pairs of nearby simulated-scene observations (the second 30 % of the way to another scene): chunk A from
    the first, then chunk B from the second conditioned on A shifted by 3 steps with 7 decided indices and
    the overlap to 13 (what the planner passes at ~0.4 s latency). Reported: the largest step between
    consecutive actions in B's executed slice, mean over pairs, in normalized action units."""
    import torch

    from edgedp.compile.quantize import observation_sets
    from edgedp.policy_loading import load_policy
    from models.inpainting import shift_chunk

    cfg = load_config(args.config)
    pol = load_policy(cfg.policy.checkpoint, "cpu", cfg.policy.steps, 0)
    conds = observation_sets(pol, None, n_calib=2 * args.pairs, n_heldout=1).calib
    out = []
    for kind, k in (("ddim", 10), ("dpmsolver++", 4)):
        for form in (None, "replace", "guided"):
            pol.configure_sampler(kind, inpaint=form)
            pol.set_num_inference_steps(k)
            steps = []
            for i in range(args.pairs):
                g1 = conds[2 * i: 2 * i + 1]
                g2 = g1 + 0.3 * (conds[2 * i + 1: 2 * i + 2] - g1)
                n1 = torch.randn(1, pol.horizon, pol.action_dim, generator=torch.Generator().manual_seed(i))
                n2 = torch.randn(1, pol.horizon, pol.action_dim, generator=torch.Generator().manual_seed(100 + i))
                with torch.inference_mode():
                    a = pol.sample(g1, n1)
                    kw = {}
                    if form:
                        pre = torch.from_numpy(shift_chunk(a[0].numpy(), 3)).float()[None]
                        kw = dict(prefix=pre, n_fixed=torch.tensor([7]), n_overlap=torch.tensor([13]))
                    b = pol.sample(g2, n2, **kw)[0]
                first = pol.n_obs_steps - 1
                ex = b[first: first + pol.n_action_steps]
                steps.append(float((ex[1:] - ex[:-1]).abs().max()))
            out.append({"sampler": kind, "k": k, "form": form or "none (unconditioned)",
                        "largest_step_mean": round(sum(steps) / len(steps), 4), "pairs": args.pairs})
            log(f"[boundary] {kind} K={k} {form}: {out[-1]['largest_step_mean']}")
    return out


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def _fallbacks(row: dict) -> str:
    if not row.get("join", "").startswith("inpaint") or "cross_faded_joins" not in row:
        return "–"
    return (f"{row['cross_faded_joins']} of {row['joins']} ({row.get('direct_join_velocity_rad_s', 0.0):.2f} "
            f"rad/s)")


def markdown(doc: dict) -> str:
    lines = [f"Config {doc['config']}, {doc['episodes']} episodes per cell (seeds {doc['seeds'][0]}..{doc['seeds'][-1]}), "
             f"episode timeout {doc['timeout_s']} s; CPU {doc['cpu']}, load average at start {doc['load_start']}, "
             f"at end {doc.get('load_end')} (shared machine).", ""]
    if doc.get("joins"):
        lines += ["| join | +latency | success | time to success | join jump pos (rad) | join jump vel (rad/s) | "
                  "largest in-chunk step (rad/s) | inference p50 | inpaint joins cross-faded (direct switch's largest "
                  "jump) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in doc["joins"]:
            t = f"{r['time_to_success_s']:.2f} s" if r["time_to_success_s"] is not None else "–"
            lines.append(f"| {r['join']} | {r['latency_ms']:g} ms | {r['successes']}/{r['episodes']} | {t} | "
                         f"{r['join_position_rad']:.4f} | {r['join_velocity_rad_s']:.2f} | {r['chunk_step_rad_s']:.2f} | "
                         f"{r['inference_ms_p50']} ms | {_fallbacks(r)} |")
        lines.append("")
    if doc.get("samplers"):
        lines += ["| sampler | K | warm start | denoiser calls | success | time to success | chunk latency p50 | "
                  "sampler alone (1 thread) |", "|---|---|---|---|---|---|---|---|"]
        for r in doc["samplers"]:
            if "error" in r:
                lines.append(f"| {r['sampler']} | {r['k']} | {'yes' if r['warm'] else 'no'} | – | not run: "
                             f"{r['error']} | | | |")
                continue
            t = f"{r['time_to_success_s']:.2f} s" if r["time_to_success_s"] is not None else "–"
            lines.append(f"| {r['sampler']} | {r['k']} | {'yes' if r['warm'] else 'no'} | {r['denoiser_calls']} | "
                         f"{r['successes']}/{r['episodes']} | {t} | {r['inference_ms_p50']} ms | "
                         f"{r['sampler_ms_1thread']} ms |")
    if doc.get("timing"):
        lines += ["", f"| sampler | K | warm start | denoiser calls | K-step loop alone (median of "
                      f"{doc['timing'][0]['rounds']} interleaved rounds, 1 thread) |", "|---|---|---|---|---|"]
        for r in doc["timing"]:
            lines.append(f"| {r['sampler']} | {r['k']} | {'yes' if r['warm'] else 'no'} | {r['denoiser_calls']} | "
                         f"{r['sampler_ms_median']} ms |")
    if doc.get("boundary"):
        lines += ["", "| sampler | K | inpainting form | largest step in the executed slice (normalized, mean of "
                  f"{doc['boundary'][0]['pairs']} pairs) |", "|---|---|---|---|"]
        for r in doc["boundary"]:
            lines.append(f"| {r['sampler']} | {r['k']} | {r['form']} | {r['largest_step_mean']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "sim.yaml")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per episode")
    ap.add_argument("--latencies", default="0,100,200,300")
    ap.add_argument("--joins", default="crossfade,ensemble,inpaint-replace,inpaint-guided")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--ks", default="1,2,4,10")
    ap.add_argument("--warm-ks", default="4,10", help="K values that also get a warm-start row")
    ap.add_argument("--cells", default=None, help="sampler rows as NAME:K or NAME:Kw (warm), comma-separated "
                                                  "(instead of every sampler x --ks)")
    ap.add_argument("--warm-level", type=float, default=0.5, help="policy.warm_start_level for the warm rows")
    ap.add_argument("--only", choices=("joins", "samplers", "boundary", "timing"), default=None)
    ap.add_argument("--pairs", type=int, default=6, help="observation pairs for the offline boundary table")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sampler_table")
    args = ap.parse_args(argv)
    args.latencies = [float(x) for x in args.latencies.split(",")]
    args.joins = [j.strip() for j in args.joins.split(",")]
    args.ks = [int(x) for x in args.ks.split(",")]
    args.warm_ks = [int(x) for x in args.warm_ks.split(",")]
    args.samplers = [s.strip() for s in args.samplers.split(",")]
    args.seeds = list(range(args.seed, args.seed + args.episodes))
    log = lambda m: print(m, flush=True)  # noqa: E731
    doc = {"config": str(args.config), "episodes": args.episodes, "seeds": args.seeds, "timeout_s": args.timeout,
           "cpu": cpu_model(), "load_start": [round(x, 2) for x in os.getloadavg()],
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        doc["load_end"] = [round(x, 2) for x in os.getloadavg()]
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        args.out.with_suffix(".md").write_text(markdown(doc))

    def keep(key: str):
        def fn(rows: list[dict]) -> None:  # after every cell: an interrupted run keeps what it measured
            doc[key] = rows
            save()
        return fn

    if args.only in (None, "joins"):
        joins_table(args, log, keep("joins"))
    if args.only in (None, "samplers"):
        samplers_table(args, log, keep("samplers"))
    if args.only in (None, "timing"):
        keep("timing")(timing_table(args, log))
    if args.only in (None, "boundary"):
        keep("boundary")(boundary_table(args, log))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
