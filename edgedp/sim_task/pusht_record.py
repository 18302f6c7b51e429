"""`edgedp record --task pusht`: the planning expert's Push-T demonstrations, written with the episode writer.

Each episode is gym-pusht's seed ``SEED + i`` run by :mod:`edgedp.sim_task.pusht_expert` in simulation time at
gym-pusht's 10 Hz, until success (coverage > 0.95) or 300 steps. Only successful episodes are kept by default
(``--keep-failures`` keeps all): a demonstration that never finishes teaches a policy to wander. Besides the
image, the gantry's joint angles and the joint targets, every frame stores the T's 16 keypoint coordinates
(``observation.environment_state``, gym-pusht's name), so one dataset trains both the image and the state policy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedp.errors import UserError


def wants_pusht(args: argparse.Namespace) -> bool:
    """--task pusht, or no --task and a --config whose scene.task is pusht."""
    if args.task is not None:
        return args.task == "pusht"
    if not args.config:
        return False
    from edgedp.config import load_config

    cfg = load_config(args.config)
    return cfg.scene is not None and cfg.scene.task == "pusht"


class _Episode:
    """What DatasetWriter.add reads, plus the keypoints as an extra per-frame array."""

    def __init__(self, ep: Any, keypoint_key: str):
        self.image, self.state, self.action, self.timestamp, self.info = ep.image, ep.state, ep.action, ep.timestamp, ep.info
        self.extras = {keypoint_key: ep.keypoints.astype(np.float32)}


def _settings(args: argparse.Namespace):
    """(pulley radius, image size, joint names) from --config (default: examples/pusht.yaml's)."""
    radius, size, names = 0.1, 96, ["x", "y"]
    if args.config:
        from edgedp.config import load_config

        cfg = load_config(args.config)
        if cfg.scene is None or cfg.scene.task != "pusht":
            raise UserError(f"{args.config}: scene.task is not pusht (record --task pusht needs a Push-T config)")
        if len(cfg.robot.joints) != 2:
            raise UserError(f"{args.config}: the Push-T gantry has 2 joints, the config has {len(cfg.robot.joints)}")
        radius = cfg.scene.pulley_radius
        virtual = [c for c in cfg.cameras if c.kind == "virtual"]
        if virtual:
            if virtual[0].width != virtual[0].height:
                raise UserError(f"{args.config}: camera '{virtual[0].name}' is {virtual[0].width}x{virtual[0].height}; "
                                f"Push-T records square images")
            size = virtual[0].width
        names = [j.name for j in cfg.robot.joints]
    return radius, size, names


def record_pusht(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgedp.console import make_console
    from edgedp.sim_task.dataset import DatasetError, DatasetWriter, EpisodeDataset

    try:
        from edgedp.sim_task.pusht_expert import PushTExpertConfig, run_expert_episode
        from firmware_bridge.sim.pusht import CONTROL_PERIOD, KEYPOINT_KEY, MAX_STEPS
    except ImportError as exc:
        raise UserError(str(exc)) from None
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    steps = MAX_STEPS if args.steps is None else args.steps
    if not 2 <= steps <= 10000:
        raise UserError(f"--steps must be 2..10000 for pusht, got {steps}")
    if abs(args.period - CONTROL_PERIOD) > 1e-9:
        raise UserError(f"--period: Push-T runs at gym-pusht's 10 Hz (0.1 s), got {args.period}")
    radius, size, names = _settings(args)
    expert = PushTExpertConfig()
    scene = {"task": "pusht", "pulley_radius": float(radius), "image_size": int(size), "period": CONTROL_PERIOD,
             "max_steps": int(steps), "success_coverage": 0.95, "keep_failures": bool(args.keep_failures)}
    features = {
        "observation.image": {"dtype": "uint8", "shape": [size, size, 3], "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": names, "unit": "rad"},
        "action": {"dtype": "float32", "shape": [2], "names": names, "unit": "rad",
                   "meaning": "gantry joint target one period after the observation"},
        "timestamp": {"dtype": "float32", "shape": [1], "unit": "s"},
        "frame_index": {"dtype": "int64", "shape": [1]},
        KEYPOINT_KEY: {"dtype": "float32", "shape": [16], "names": [f"{a}{i}" for i in range(8) for a in "xy"],
                       "unit": "gym-pusht table units (mm)"},
    }
    settings = {"robot_type": "sim-pusht-gantry", "task": "pusht", "scene": scene, "features": features,
                "expert": {"kind": "push planner on gym-pusht's simulation", **expert.to_dict()}, "seed": args.seed}
    out = Path(args.out)
    try:
        if args.append:
            writer = DatasetWriter.open_for_append(out)
            if writer.info.get("scene") != scene or writer.info.get("seed") != args.seed:
                raise UserError(f"{out}: recorded with other settings (scene {writer.info.get('scene')}, seed "
                                f"{writer.info.get('seed')}); append with the same --config/--steps/--seed")
        else:
            if out.exists() and (out / "meta" / "episodes.jsonl").exists():
                raise UserError(f"{out}: already a dataset with {len(EpisodeDataset(out))} episodes "
                                f"(use --append to add more, or a new --out)")
            writer = DatasetWriter.create(out, 1.0 / CONTROL_PERIOD, size, names, settings)
    except DatasetError as exc:
        raise UserError(str(exc)) from None

    console = make_console()
    tried = successes = 0
    # Seeds continue after the last one tried (stored per episode), so --append never repeats a seed.
    next_seed = max((e.get("seed", -1) for e in writer.episodes), default=args.seed - 1) + 1
    next_seed = max(next_seed, args.seed)
    started = time.monotonic()
    with Progress(TextColumn("recording pusht"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=not console.is_terminal) as bar:
        job = bar.add_task("episodes", total=args.episodes, note="")
        kept = 0
        while kept < args.episodes:
            ep = run_expert_episode(next_seed, expert, pulley_radius=radius, image_size=size, max_steps=steps)
            next_seed += 1
            tried += 1
            successes += int(ep.info["success"])
            if ep.info["success"] or args.keep_failures:
                writer.add(_Episode(ep, KEYPOINT_KEY))
                kept += 1
                bar.update(job, advance=1)
            bar.update(job, note=f"expert success {successes}/{tried}")
            if tried >= 3 * args.episodes + 10 and kept < args.episodes:
                raise UserError(f"the expert succeeded in only {successes} of {tried} episodes; stopping "
                                f"({kept} kept in {out})")
    elapsed = time.monotonic() - started
    console.print(f"{out}: {writer.num_episodes} episodes ({writer.info['total_frames']} frames), task pusht; "
                  f"tried {tried} seeds in {elapsed:.1f} s, expert success {successes}/{tried}, kept {kept}")
    return 0
