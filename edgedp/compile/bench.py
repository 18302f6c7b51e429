"""Per-stage latency of every backend x precision, the roofline, and the reference way of running.

Shared by `edgedp bench` and benchmarks/denoise_latency.py so both measure the same code.
Every number in one report comes from one process, side by side, so ratios are meaningful on a
noisy shared machine even when absolute milliseconds drift.

Stages (all at batch 1, inputs float32):
* ``encoder_ms``: raw observation -> global condition (normalize + image encoder).
* ``step_ms``: one denoiser call eps_theta(x_k, k, cond).
* ``scheduler_ms``: one scheduler update x_k -> x_{k-1} (the sampler's own step kernel).
* ``chunk_ms``: encoder + loop, observation in, normalized action chunk out.
The reference runs the same weights the way the reference implementations do: plain eager
float32 PyTorch with a diffusers scheduler stepped from Python (encoder included).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgedp.compile.quantize import action_error, observation_action_error, synthetic_observations
from firmware_bridge.atomic_file import atomic_path

Progress = Callable[[str], None]


def _stats(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(ts)
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "n": int(a.size)}


def default_pairs(device: torch.device) -> list[tuple[str, str]]:
    """What `bench` measures when not told: every available pair, minus fp16 on CPUs (no native fp16 GEMM)."""
    from edgedp.compile.api import available_backends

    pairs = available_backends(device)
    if device.type == "cpu":
        pairs = [(b, p) for b, p in pairs if p != "fp16"]
    return pairs


def diffusers_scheduler(policy: Any, steps: int):
    """The diffusers scheduler matching the policy's spec, or None when diffusers is not installed."""
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        return None
    s = policy.scheduler_spec
    common = dict(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
                  beta_schedule=s.beta_schedule, clip_sample=s.clip_sample, prediction_type=s.prediction_type)
    if s.kind == "ddim":
        sched = DDIMScheduler(set_alpha_to_one=s.set_alpha_to_one, steps_offset=s.steps_offset, **common)
    else:
        sched = DDPMScheduler(variance_type=s.variance_type, **common)
    sched.set_timesteps(steps)
    return sched


def reference_chunk(policy: Any, sched: Any, obs: dict, noise: torch.Tensor) -> torch.Tensor:
    """Observation -> normalized actions, as the reference code does it (eager fp32, Python scheduler loop)."""
    with torch.inference_mode():
        g = policy.encode(obs)
        x = noise.clone()
        for t in sched.timesteps:
            eps = policy.denoiser(x, t, g)
            x = sched.step(eps, t, x).prev_sample
        return x


def run_bench(policy: Any, steps: int, pairs: list[tuple[str, str]] | None = None, device: str = "cpu",
              repeats: int = 10, warmup: int = 2, loop_repeats: int | None = None, rmse_samples: int = 2,
              cache_dir: str | Path | None = None, progress: Progress | None = None,
              lerobot: Any = None) -> dict[str, Any]:
    """Every backend's stages, then whole chunks round-robin with the references.

    ``lerobot``: a running :class:`edgedp.compile.lerobot_ref.LeRobotReference` over the same weights; its
    chunks (LeRobot's ``select_action``, timed in its own process) join the round-robin and every
    backend gets ``speedup_vs_lerobot``."""
    from edgedp.compile.api import compile_policy, parse_device
    from edgedp.compile.backends import get_backend
    from edgedp.compile.roofline import machine_roofline, roofline_ms, step_flops

    say = progress or (lambda _m: None)
    dev = parse_device(device)
    pairs = pairs or default_pairs(dev)
    loop_repeats = loop_repeats or repeats
    say("measuring this machine's memory bandwidth and peak GEMM throughput")
    machine = machine_roofline(dev, refresh=True)
    flops = step_flops(_fp32_copy(policy), policy.horizon, policy.action_dim, policy.global_cond_dim)
    obs = synthetic_observations(policy, 1, seed=99)[0]
    held_obs = synthetic_observations(policy, rmse_samples, seed=5)
    held = torch.cat([policy.encode(o).float() for o in held_obs])
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((1, policy.horizon, policy.action_dim), generator=gen)
    t_mid = torch.full((1,), int(policy.scheduler_spec.num_train_timesteps) // 2, dtype=torch.long)

    report: dict[str, Any] = {
        "steps": steps, "device": str(dev), "machine": machine, "step_flops": flops,
        "parameters": policy.parameter_counts(), "repeats": repeats, "loop_repeats": loop_repeats,
        "warmup": warmup, "results": {},
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }

    sched = diffusers_scheduler(policy, steps)
    if sched is not None:
        report["reference"] = f"eager fp32 + diffusers {type(sched).__name__}"
    else:
        report["reference"] = "diffusers not installed: eager fp32 loop used as the reference"

    ref_sampler = get_backend("eager").build(policy, "fp32", steps, dev, Path("."), None)
    built: dict[str, Any] = {}
    for backend, precision in pairs:
        label = f"{backend}/{precision}"
        say(f"{label}: build or load")
        rep = compile_policy(policy, backend, precision, steps, dev, cache_dir, gate=False, progress=say)
        cs = rep.sampler
        g = cs.encode(obs)
        x = noise.to(dev)
        t = t_mid.to(dev)
        loop_mod = cs.loop if hasattr(cs.loop, "step") else getattr(cs.loop, "loop")
        eps = cs.step(x, t, g)
        say(f"{label}: timing stages")
        enc = _stats(lambda: cs.encode(obs), repeats, warmup)
        if cs.info.get("fused_loop"):
            # The loop is one graph: a step is the loop's time over K (scheduler arithmetic included).
            whole = _stats(lambda: cs(g, x), repeats, warmup)
            step = {k: v / steps if k != "n" else v for k, v in whole.items()}
        else:
            step = _stats(lambda: _sync(dev, cs.step(x, t, g)), repeats, warmup)
        with torch.inference_mode():
            upd = _stats(lambda: _sync(dev, loop_mod.step(0, eps, x)), repeats, warmup)
        say(f"{label}: action error vs float32")
        rmse, worst = action_error(ref_sampler, cs, held, steps)
        obs_rmse, obs_worst = observation_action_error(ref_sampler, cs, held_obs, steps)
        peak = machine["peak_gflops"].get(precision) or machine["peak_gflops"].get("fp32")
        roof = roofline_ms(cs.weight_bytes, flops, machine["bandwidth_gbs"], peak)
        built[label] = (cs, g, x)
        report["results"][label] = {
            "step_ms": step["median"], "step_p99_ms": step["p99"],
            "encoder_ms": enc["median"], "encoder_p99_ms": enc["p99"],
            "scheduler_ms": upd["median"], "scheduler_p99_ms": upd["p99"],
            "weight_bytes": cs.weight_bytes, "roofline_step_ms": roof,
            "roofline_fraction": roof / step["median"] if step["median"] > 0 else math.nan,
            "action_rmse_vs_fp32": rmse, "action_max_vs_fp32": worst,
            "obs_action_rmse_vs_fp32": obs_rmse, "obs_action_max_vs_fp32": obs_worst,
            "cache": rep.state, "build_s": rep.build_s,
        }

    # Whole chunks, round-robin over every backend and the references, the order reversed on every
    # other round: a neighbour's burst of load on a shared machine hits all of them alike and no one
    # always runs right after another's cache-flushing chunk, so the ratios stay honest.
    say("timing whole chunks (round-robin over backends and the references)")
    runners: dict[str, Callable[[], Any]] = {}
    for label, (cs, g, x) in built.items():
        runners[label + "#chunk"] = (lambda cs=cs, x=x: _sync(dev, cs(cs.encode(obs), x)))
    if sched is not None:
        runners["#reference"] = lambda: reference_chunk(policy, sched, obs, noise)
    if lerobot is not None:
        runners["#lerobot"] = lambda: lerobot.time_chunks(1)[0]  # timed inside LeRobot's process
        report["lerobot"] = dict(lerobot.info)
    times = round_robin(runners, loop_repeats, warmup=min(warmup, 1))
    for label in built:
        res = report["results"][label]
        a = np.asarray(times[f"{label}#chunk"])
        res["chunk_ms"] = float(np.median(a))
        res["chunk_p99_ms"] = float(np.percentile(a, 99))
    for key, name in (("#reference", "reference"), ("#lerobot", "lerobot")):
        if key not in times:
            continue
        a = np.asarray(times[key])
        report[f"{name}_chunk_ms"] = float(np.median(a))
        report[f"{name}_chunk_p99_ms"] = float(np.percentile(a, 99))
        report[f"{name}_chunk_all_ms"] = [float(v) for v in a]
        for res in report["results"].values():
            res[f"speedup_vs_{name}"] = report[f"{name}_chunk_ms"] / res["chunk_ms"]
    report["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def round_robin(runners: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds per runner over `repeats` rounds, order reversed every other round.

    A runner that returns a float has timed itself (LeRobot's chunks, timed in its own process, so the
    pipe round trip is not counted); otherwise the wall time of the call is taken."""
    names = list(runners)
    for _ in range(max(0, warmup)):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(max(1, repeats)):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            out = runners[name]()
            wall = (time.perf_counter() - t0) * 1e3
            times[name].append(float(out) if isinstance(out, float) else wall)
    return times


def _fp32_copy(policy: Any) -> torch.nn.Module:
    import copy

    return copy.deepcopy(policy.denoiser).to("cpu", torch.float32).eval()


def _sync(dev: torch.device, out: Any) -> Any:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label, r in report["results"].items():
        rows.append([
            label, f"{r['chunk_ms']:.1f}", f"{r['chunk_p99_ms']:.1f}", f"{r['step_ms']:.2f}", f"{r['step_p99_ms']:.2f}",
            f"{r['encoder_ms']:.2f}", f"{r['scheduler_ms']:.3f}", f"{r['roofline_step_ms']:.2f}",
            f"{100 * r['roofline_fraction']:.0f}%", f"{r['action_rmse_vs_fp32']:.4f}",
            f"{r['obs_action_rmse_vs_fp32']:.4f}",
            f"{r.get('speedup_vs_reference', float('nan')):.2f}x",
            f"{r['speedup_vs_lerobot']:.2f}x" if "speedup_vs_lerobot" in r else "-",
        ])
    return rows


TABLE_COLUMNS = ["backend/precision", "chunk ms", "p99", "step ms", "p99", "encoder ms", "sched ms",
                 "roofline ms", "of roofline", "RMSE vs fp32", "RMSE obs->act", "vs reference", "vs LeRobot"]


def write_chart(report: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Bar chart of chunk latency per backend/precision with the reference bar, written atomically."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["results"])
    values = [report["results"][k]["chunk_ms"] for k in labels]
    colors = ["tab:blue"] * len(labels)
    if "reference_chunk_ms" in report:
        labels = ["reference\n(eager fp32 +\ndiffusers)"] + labels
        values = [report["reference_chunk_ms"]] + values
        colors = ["tab:gray"] + colors
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 4.2))
    bars = ax.bar(range(len(labels)), values, color=colors)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("ms per chunk (median)")
    ax.set_title(title or f"one action chunk, K={report['steps']}")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
