"""A quick closed-loop check of a trained policy on the sim task, without the real-time runtime.

The scene's kinematics are stepped directly at the action period: the policy sees the last
``n_obs_steps`` rendered images and joint angles, its chunk's executed steps become the next joint
angles (clamped to the joint limits, as the safety filter would), and success is judged at the
end of the episode. This measures what the policy learned; what the runtime's choices (latency,
asynchronous planning, joins, quantization) cost on top is for ``edgedp eval``.

    python -m edgedp.sim_task.rollout models/trained/sim_reach --episodes 50
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgedp.sim_task.expert import ExpertConfig, TaskConfig, make_scene


@dataclass
class RolloutResult:
    seed: int
    success: bool
    final_distance: float
    min_distance: float
    chosen_target: Optional[int]  # nearest target at the end (multimodal)


def run_episode(policy, task: TaskConfig, expert: ExpertConfig, seed: int, steps: Optional[int] = None) -> RolloutResult:
    lo, hi = expert.limits()
    q = np.zeros(len(task.link_lengths))
    scene = make_scene(task, lambda: q, seed=seed)
    targets = scene.reset(seed)
    rng = np.random.default_rng([seed, 1])  # the same start pose the expert got for this seed
    q[:] = np.clip(np.asarray(task.home) + rng.uniform(-task.start_noise, task.start_noise, size=q.size), lo, hi)
    n_obs = policy.n_obs_steps
    frames: deque = deque(maxlen=n_obs)
    states: deque = deque(maxlen=n_obs)

    def observe() -> None:
        frames.append(scene.render()[0])
        states.append(q.astype(np.float32).copy())
        while len(frames) < n_obs:  # the first observation fills the whole window
            frames.appendleft(frames[0])
            states.appendleft(states[0])

    observe()
    total = int(steps or task.steps)
    done, min_d = 0, scene.distance_to_target()
    while done < total:
        chunk = policy.predict_chunk({"observation.image": np.stack(frames), "observation.state": np.stack(states)})
        for a in chunk[policy.action_slice]:
            q[:] = np.clip(a, lo, hi)
            done += 1
            observe()
            min_d = min(min_d, scene.distance_to_target())
            if done >= total:
                break
    tip = scene.end_effector()
    nearest = int(np.argmin(np.linalg.norm(targets - tip, axis=1))) if len(targets) else None
    return RolloutResult(seed, scene.success(), scene.distance_to_target(), min_d, nearest)


def evaluate(policy, task: TaskConfig, expert: ExpertConfig, seeds: Sequence[int]) -> dict:
    results = [run_episode(policy, task, expert, s) for s in seeds]
    d = np.array([r.final_distance for r in results])
    out = {
        "episodes": len(results),
        "success_rate": float(np.mean([r.success for r in results])),
        "final_distance_median_m": float(np.median(d)),
        "final_distance_mean_m": float(np.mean(d)),
    }
    chosen = [r.chosen_target for r in results if r.chosen_target is not None]
    if task.task == "reach_multimodal" and chosen:
        out["fraction_at_target_1"] = float(np.mean(chosen))
    out["per_episode"] = [r.__dict__ for r in results]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgedp.sim_task.rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--first-seed", type=int, default=0, help="scene seeds FIRST..FIRST+N-1 (training used 1000+)")
    p.add_argument("--task", choices=("reach", "reach_multimodal"), default="reach")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--k", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import torch

    from edgedp.policy_loading import load_policy

    torch.set_num_threads(1)  # 2 threads spin against each other on a shared 2-core machine
    policy = load_policy(args.checkpoint, device="cpu", num_inference_steps=args.k, seed=0)
    task = TaskConfig(task=args.task, steps=args.steps)
    t0 = time.monotonic()
    res = evaluate(policy, task, ExpertConfig(), range(args.first_seed, args.first_seed + args.episodes))
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["checkpoint"] = args.checkpoint
    res["num_inference_steps"] = policy.num_inference_steps
    summary = {k: v for k, v in res.items() if k != "per_episode"}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
