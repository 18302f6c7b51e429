"""How far each sampler lands from the probability-flow ODE's own answer, offline, on one checkpoint.

Why: a closed-loop success rate needs hundreds of real-time episodes and mixes the sampler with everything
else; this measures the sampler alone. Every cell starts from the same Gaussian noise on the same dataset
windows, and is compared on the executed slice (the n_action_steps actions from "now") with

* err_ode: the mean L2 distance (normalized action units) to a fine solve of the same ODE from the same noise
  (DPM-Solver++ at K = 50, trailing spacing, by default): the solver's own error;
* err_data: the mean L2 distance to the dataset's recorded actions (the demonstrations are multimodal, so
  this stays well above zero for any sampler; it shows whether a cell is worse than the others).

This is where `policy.timesteps: logsnr` came from (README "Fast samplers"): the spacings put DPM-Solver++
K = 4 at t = 80, 60, 40, 20 and its last step jumps from t = 20 to the clean sample.

    python benchmarks/solver_error.py --dataset data/pusht --checkpoint models/trained/pusht_state
    python benchmarks/solver_error.py ... --cells ddim:10,dpmsolver++:4,dpmsolver++:4:logsnr,dpmsolver++:4:90-60-30-0

A cell is SAMPLER:K[:TIMESTEPS], TIMESTEPS being `logsnr`, a spacing (leading, linspace, trailing) or a
dash-separated descending list; without it the checkpoint's spacing. The dataset is one `edgedp record` wrote
(LeRobot v3.0 or .npz), with the checkpoint's observation features.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CELLS = ("ddim:10,ddim:4,dpmsolver++:4,dpmsolver++:4:trailing,dpmsolver++:4:logsnr,unipc:4:logsnr,"
                 "dpmsolver++:4:90-60-30-0,dpmsolver++:4:90-60-30-5,dpmsolver++:10:logsnr")


def parse_cell(text: str) -> tuple[str, int, str | None]:
    """'dpmsolver++:4:logsnr' -> ('dpmsolver++', 4, 'logsnr'); the timesteps part is optional."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise SystemExit(f"solver_error: cell '{text}' is not SAMPLER:K[:TIMESTEPS]")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else None


def timesteps_for(policy, kind: str, k: int, spec: str | None):
    """What configure_sampler gets for a cell's TIMESTEPS part (None: the checkpoint's spacing rule)."""
    from models.multistep import solver_timesteps

    if spec is None or spec == "logsnr":
        return spec
    if spec in ("leading", "linspace", "trailing"):
        sched = policy.scheduler_spec
        return solver_timesteps(spec, sched.num_train_timesteps, k, sched.steps_offset).tolist()
    return [int(t) for t in spec.split("-")]


def windows(dataset: str, policy, count: int, seed: int):
    """``count`` random training windows: raw observations (the policy's inputs) and normalized actions."""
    from edgedp.datasets.episodes import open_episodes
    from edgedp.sim_task.train import InMemoryData

    data = InMemoryData(open_episodes(dataset), policy.n_obs_steps, policy.horizon,
                        with_images=bool(policy.image_keys))
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(data.windows), (count,), generator=gen)
    obs, action = data.batch(rows)
    with torch.inference_mode():
        cond = policy.obs_encoder({k: v.float() for k, v in policy.normalize_obs(obs).items()})
        target = policy.normalizers[policy.spec.action_key](action.float())
    noise = torch.randn(count, policy.horizon, policy.action_dim, generator=gen)
    return cond, target, noise


def solve(checkpoint: str, kind: str, k: int, steps, cond, noise) -> tuple[torch.Tensor, list[int]]:
    """One cell on a fresh copy of the policy (a K or timesteps left by the previous cell cannot clash)."""
    from edgedp.policy_loading import load_policy

    policy = load_policy(checkpoint)
    policy.set_num_inference_steps(k)
    policy.configure_sampler(kind, timesteps=steps)
    with torch.inference_mode():
        out = policy.sampler(noise, cond, None)
    return out, [int(t) for t in policy.sampler.timesteps]


def main(argv=None) -> int:
    from edgedp.policy_loading import load_policy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "trained" / "pusht_state"))
    ap.add_argument("--dataset", required=True, help="the recorded dataset the checkpoint was trained on")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", default=DEFAULT_CELLS)
    ap.add_argument("--reference", default="dpmsolver++:50:trailing", help="the fine ODE solve (a cell)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint)
    cond, target, noise = windows(args.dataset, policy, args.windows, args.seed)
    executed = slice(policy.n_obs_steps - 1, policy.n_obs_steps - 1 + policy.n_action_steps)

    def distance(a, b) -> float:
        return float((a - b)[:, executed].norm(dim=-1).mean())

    rkind, rk, rsteps = parse_cell(args.reference)
    reference, _ = solve(args.checkpoint, rkind, rk, timesteps_for(policy, rkind, rk, rsteps), cond, noise)
    rows = []
    for text in args.cells.split(","):
        kind, k, spec = parse_cell(text)
        out, used = solve(args.checkpoint, kind, k, timesteps_for(policy, kind, k, spec), cond, noise)
        rows.append({"cell": text, "timesteps": used, "err_ode": distance(out, reference),
                     "err_data": distance(out, target)})
    print(f"{args.checkpoint}, {args.windows} windows of {args.dataset} (seed {args.seed}); reference "
          f"{args.reference}; executed slice of {policy.n_action_steps}; {platform.processor() or platform.machine()}")
    print("\n| cell | timesteps | err_ode | err_data |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['timesteps']} | {r['err_ode']:.4f} | {r['err_data']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "dataset": args.dataset,
                                               "windows": args.windows, "seed": args.seed,
                                               "reference": args.reference, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    from edgedp.errors import UserError

    try:
        sys.exit(main())
    except (UserError, ValueError, OSError) as exc:  # a bad path, cell or checkpoint: one line, not a traceback
        print(f"solver_error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        sys.exit(2)
