"""`edgedp record --task pusht`: the planning expert's Push-T demonstrations, written as a LeRobot v3.0 dataset.

Each episode is gym-pusht's seed ``SEED + i`` run by :mod:`edgedp.sim_task.pusht_expert` in simulation time at
gym-pusht's 10 Hz, until success (coverage > 0.95) or ``--steps`` (default 300). Only successful episodes are
kept by default (``--keep-failures`` keeps all): a demonstration that never finishes teaches a policy to wander.
Besides the image (video), the gantry's joint angles and the joint targets, every frame stores the T's 16
keypoint coordinates as the feature ``observation.environment_state`` (gym-pusht's and LeRobot's name, as in
LeRobot's pusht_keypoints set), so one dataset trains both the image and the state policy. The v3.0 writer
(edgedp/datasets/writer.py) commits each episode through its journal: a crash loses at most the open episode,
and ``--append`` finishes or removes it before continuing.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgedp.errors import UserError

ROBOT_TYPE = "sim-pusht-gantry"


def wants_pusht(args: argparse.Namespace) -> bool:
    """--task pusht, or no --task and a --config whose scene.task is pusht."""
    if args.task is not None:
        return args.task == "pusht"
    if not args.config:
        return False
    from edgedp.config import load_config

    cfg = load_config(args.config)
    return cfg.scene is not None and cfg.scene.task == "pusht"


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


def pusht_features(image_size: int, joint_names: list[str], keypoint_key: str, n_keypoints: int = 8) -> dict[str, dict]:
    """The reach recording's features (video, joint state, next joint target) plus the T's keypoint coordinates."""
    from edgedp.datasets.convert import sim_features

    return {**sim_features(image_size, joint_names),
            keypoint_key: {"dtype": "float32", "shape": [2 * n_keypoints],
                           "names": [f"{a}{i}" for i in range(n_keypoints) for a in "xy"]}}


def _next_seed(episodes: list[dict], first: int) -> int:
    """Seeds continue after the last one tried (stored per episode), so --append never repeats a seed."""
    seeds = [json.loads(e["edgedp/info"]).get("seed", -1) for e in episodes if e.get("edgedp/info")]
    return max(max(seeds, default=first - 1) + 1, first)


def _open_writer(out: Path, fps: int, features: dict, settings: dict, append: bool):
    from edgedp.datasets import DatasetError
    from edgedp.datasets.writer import DatasetWriter

    try:
        if append:
            writer = DatasetWriter.open_for_append(out)
            stored = writer.info.get("edgedp", {})
            if stored.get("scene") != settings["scene"] or stored.get("seed") != settings["seed"]:
                raise UserError(f"{out}: recorded with other settings (scene {stored.get('scene')}, seed "
                                f"{stored.get('seed')}); append with the same --config/--steps/--seed")
            return writer
        if (out / "meta" / "info.json").exists():
            n = json.loads((out / "meta" / "info.json").read_text()).get("total_episodes", "?")
            raise UserError(f"{out}: already a dataset with {n} episodes (use --append to add more, or a new --out)")
        return DatasetWriter.create(out, fps, features, robot_type=ROBOT_TYPE, extra=settings)
    except DatasetError as exc:
        raise UserError(str(exc)) from None


def record_pusht(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgedp.console import make_console

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
    settings = {"robot_type": ROBOT_TYPE, "task": "pusht", "scene": scene,
                "units": {"observation.state": "rad", "action": "rad (gantry joint target one period later)",
                          KEYPOINT_KEY: "gym-pusht table units (mm)"},
                "expert": {"kind": "push planner on gym-pusht's simulation", **expert.to_dict()}, "seed": args.seed}
    out = Path(args.out)
    writer = _open_writer(out, round(1.0 / CONTROL_PERIOD), pusht_features(size, names, KEYPOINT_KEY), settings,
                          args.append)

    console = make_console()
    tried = successes = kept = 0
    next_seed = _next_seed(writer.episodes, args.seed)
    pace = (lambda _i: time.sleep(args.step_delay)) if getattr(args, "step_delay", 0) > 0 else None
    started = time.monotonic()
    with Progress(TextColumn("recording pusht"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=not console.is_terminal) as bar:
        job = bar.add_task("episodes", total=args.episodes, note="")
        while kept < args.episodes:
            ep = run_expert_episode(next_seed, expert, pulley_radius=radius, image_size=size, max_steps=steps,
                                    on_step=pace)
            next_seed += 1
            tried += 1
            successes += int(ep.info["success"])
            if ep.info["success"] or args.keep_failures:
                writer.add_episode({"observation.image": ep.image, "observation.state": ep.state,
                                    "action": ep.action, KEYPOINT_KEY: ep.keypoints}, "pusht", extra=ep.info)
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
