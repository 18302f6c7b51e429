#!/usr/bin/env python
"""LeRobot's own Diffusion Policy, timed the way users run it: the child side of `edgedp bench --vs-lerobot`.

Runs INSIDE a venv with lerobot installed (default /work/venvs/lerobot044: lerobot 0.4.4, torch 2.9.1)
and imports nothing from edgedp, so what it times is LeRobot's code alone:

    python vs_lerobot_child.py make  --out DIR --config JSON --seed N   # write a pretrained_model/ dir
    python vs_lerobot_child.py serve --dir DIR --steps K --threads 1    # JSON lines on stdin/stdout

``make`` builds ``DiffusionConfig(**config)`` with LeRobot's default (seeded) initialisation, pre/post
processors from the given dataset stats, and saves all three with their own ``save_pretrained``: the
layout lerobot-train writes, which edgedp imports, so both sides run the same weights.

``serve`` loads DIR with ``DiffusionPolicy.from_pretrained`` + ``make_pre_post_processors`` and answers
``{"n": N}`` with the wall time of N chunks.  One chunk = ``policy.reset()`` (untimed) then, timed,
the preprocessor on one raw observation and ``select_action``, whose empty action queue makes it run
the whole encoder + K-step eager loop (diffusers scheduler stepped from Python), as in a rollout.
``{"quit": true}`` ends it.  Why a long-lived child: the parent alternates it with edgedp's backends
in one run, so load on a shared machine hits both alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _stats(stats: dict) -> dict:
    import numpy as np

    return {key: {name: np.asarray(v, dtype=np.float64) for name, v in fields.items()} for key, fields in stats.items()}


def make(args: argparse.Namespace) -> int:
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    req = json.loads(args.config)
    feats = {k: PolicyFeature(type=FeatureType.VISUAL, shape=tuple(s)) for k, s in req["images"].items()}
    feats.update({k: PolicyFeature(type=FeatureType.STATE, shape=tuple(s)) for k, s in req["states"].items()})
    outs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(int(req["action_dim"]),))}
    torch.manual_seed(args.seed)
    cfg = DiffusionConfig(input_features=feats, output_features=outs, device="cpu", push_to_hub=False,
                          pretrained_backbone_weights=None, **req["config"])
    policy = DiffusionPolicy(cfg).eval()
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats(req["stats"]))
    policy.save_pretrained(args.out)
    pre.save_pretrained(args.out)
    post.save_pretrained(args.out)
    print(json.dumps({"parameters": sum(p.numel() for p in policy.parameters())}))
    return 0


def _observation(policy, seed: int) -> dict:
    """One raw observation as an env hands it to the preprocessor: float images in [0,1], float state."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    obs = {}
    for key, feat in policy.config.image_features.items():
        obs[key] = torch.rand((1, *feat.shape), generator=gen)
    state = policy.config.robot_state_feature
    obs["observation.state"] = torch.rand((1, *state.shape), generator=gen)
    return obs


def serve(args: argparse.Namespace) -> int:
    import torch
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    torch.set_num_threads(args.threads)
    policy = DiffusionPolicy.from_pretrained(args.dir).eval()
    policy.diffusion.num_inference_steps = args.steps
    pre, _post = make_pre_post_processors(policy.config, pretrained_path=args.dir,
                                          preprocessor_overrides={"device_processor": {"device": "cpu"}})
    obs = _observation(policy, args.seed)

    def chunk() -> float:
        policy.reset()
        t0 = time.perf_counter()
        with torch.inference_mode():
            policy.select_action(pre(dict(obs)))
        return (time.perf_counter() - t0) * 1e3

    chunk()  # warm-up: first-call allocations, diffusers set_timesteps
    hello = {"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__,
             "lerobot": __import__("lerobot").__version__, "capability": torch.backends.cpu.get_cpu_capability(),
             "parameters": sum(p.numel() for p in policy.parameters()), "steps": args.steps,
             "scheduler": type(policy.diffusion.noise_scheduler).__name__}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        times = [chunk() for _ in range(int(req.get("n", 1)))]
        print(json.dumps({"ms": times}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--config", required=True, help="JSON: images, states, action_dim, stats, config")
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("serve")
    s.add_argument("--dir", required=True)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--seed", type=int, default=99)
    args = ap.parse_args(argv)
    return make(args) if args.cmd == "make" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
