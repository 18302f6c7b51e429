"""`edgedp record`: scripted-expert demonstrations of the sim reach task (and Push-T: pusht_record.py), written crash-safely."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record scripted-expert demonstrations of the simulated reach task")
    p.add_argument("--out", required=True, help="dataset folder (new, or an existing dataset with --append)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to record (default 100)")
    p.add_argument("--task", choices=("reach", "reach_multimodal", "pusht"), default=None,
                   help="reach: one target; reach_multimodal: two identical targets, the expert picks either; "
                        "pusht: gym-pusht with the planning expert (default: the config's scene.task, else reach)")
    p.add_argument("--config", help="run config whose scene (links, workspace), joint limits and camera size to use "
                                    "(default: those of examples/sim.yaml)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses scene seed SEED+i (default 0)")
    p.add_argument("--steps", type=int, default=None, help="steps per episode (default 30; pusht: at most 300)")
    p.add_argument("--keep-failures", action="store_true", help="pusht: also keep episodes the expert did not finish")
    p.add_argument("--period", type=float, default=0.1, help="seconds between actions (default 0.1)")
    p.add_argument("--append", action="store_true", help="add episodes to an existing dataset (resumes after a crash)")
    p.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow recording down
    p.set_defaults(func=run)


def _settings_from_config(path: str | None):
    """Task + expert settings: defaults match examples/sim.yaml; a run config overrides them."""
    from edgedp.sim_task.expert import ExpertConfig, TaskConfig

    task, expert, names = TaskConfig(), ExpertConfig(), ["shoulder", "elbow"]
    if path is None:
        return task, expert, names
    from edgedp.config import load_config

    cfg = load_config(path)
    if cfg.scene is None:
        raise UserError(f"{path}: no scene section (recording needs the simulated scene)")
    task.link_lengths = tuple(cfg.scene.link_lengths)
    task.workspace = cfg.scene.workspace
    task.task = cfg.scene.task if cfg.scene.task != "none" else "reach"
    if cfg.cameras:
        cam = cfg.cameras[0]
        if cam.width != cam.height:
            raise UserError(f"{path}: camera '{cam.name}' is {cam.width}x{cam.height}; the sim task records square images")
        task.image_size = cam.width
    if len(cfg.robot.joints) != len(task.link_lengths):
        raise UserError(f"{path}: {len(cfg.robot.joints)} joints but scene.link_lengths has {len(task.link_lengths)} links")
    expert.joint_limits = tuple((j.min, j.max) for j in cfg.robot.joints)
    task.home = tuple(min(max(0.0, j.min), j.max) for j in cfg.robot.joints)
    names = [j.name for j in cfg.robot.joints]
    return task, expert, names


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgedp.console import make_console
    from edgedp.datasets import DatasetError, check_creatable
    from edgedp.datasets.convert import episode_frames, sim_features
    from edgedp.datasets.writer import DatasetWriter
    from edgedp.sim_task.expert import record_episode

    from edgedp.sim_task.pusht_record import record_pusht, wants_pusht

    if not args.append:  # an --out that cannot be made is one line before any episode is recorded
        try:
            check_creatable(Path(args.out), "--out")
        except DatasetError as exc:
            raise UserError(str(exc)) from None
    if wants_pusht(args):
        return record_pusht(args)
    if args.steps is None:
        args.steps = 30
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.steps < 2:
        raise UserError(f"--steps must be at least 2, got {args.steps}")
    if not args.period > 0:
        raise UserError(f"--period must be positive seconds, got {args.period}")
    task, expert, names = _settings_from_config(args.config)
    if args.task:
        task.task = args.task
    task.steps, task.period = args.steps, args.period
    out = Path(args.out)
    fps = 1.0 / task.period
    if abs(fps - round(fps)) > 1e-9:  # LeRobot v3.0 stores an integer fps and times frames by it
        raise UserError(f"--period {args.period}: 1/period must be a whole number of frames per second (e.g. 0.1, 0.05)")
    settings = {"robot_type": "sim-planar-arm", "task": task.task, "scene": task.to_dict(),
                "expert": {"kind": "joint-space proportional, speed-limited", "max_speed": expert.max_speed,
                           "gain": expert.gain, "joint_limits": [list(map(float, l)) for l in expert.joint_limits]},
                "seed": args.seed}
    try:
        if args.append:
            writer = DatasetWriter.open_for_append(out)
            stored = writer.info.get("edgedp", {})
            if stored.get("scene") != task.to_dict() or stored.get("seed") != args.seed:
                raise UserError(f"{out}: recorded with other settings (scene {stored.get('scene')}, seed {stored.get('seed')}); "
                                "append with the same --task/--config/--steps/--period/--seed")
        else:
            if (out / "meta" / "info.json").exists():
                n = json.loads((out / "meta" / "info.json").read_text()).get("total_episodes", "?")
                raise UserError(f"{out}: already a dataset with {n} episodes (use --append to add more, or a new --out)")
            writer = DatasetWriter.create(out, round(fps), sim_features(task.image_size, names),
                                          robot_type=settings["robot_type"], extra=settings)
    except DatasetError as exc:
        raise UserError(str(exc)) from None

    console = make_console()
    first = writer.num_episodes
    successes = 0
    started = time.monotonic()
    with Progress(TextColumn("recording"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=not console.is_terminal) as bar:
        job = bar.add_task("episodes", total=args.episodes, note="")
        for i in range(first, first + args.episodes):
            pace = (lambda _i: time.sleep(args.step_delay)) if args.step_delay > 0 else None
            ep = record_episode(task, expert, args.seed + i, on_step=pace)
            writer.add_episode(episode_frames(ep), task.task, extra=ep.info)
            successes += int(ep.info["success"])
            bar.update(job, advance=1, note=f"expert success {successes}/{i - first + 1}")
    elapsed = time.monotonic() - started
    console.print(f"{out}: {writer.num_episodes} episodes ({writer.info['total_frames']} frames), task {task.task}; "
                  f"recorded {args.episodes} in {elapsed:.1f} s, expert success {successes}/{args.episodes}")
    return 0
