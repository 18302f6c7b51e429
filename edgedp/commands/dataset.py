"""`edgedp dataset info|convert|repair`: look at, convert and repair episode datasets (LeRobot v3.0, old .npz)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect, convert (.npz -> LeRobot v3.0) or repair an episode dataset")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    info = verbs.add_parser("info", help="episodes, frames, features, files and sizes of a dataset")
    info.add_argument("path", help="dataset folder (LeRobot v3.0 or an old edgedp .npz set)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    conv = verbs.add_parser("convert", help="convert an old edgedp .npz episode set to a LeRobot v3.0 dataset")
    conv.add_argument("src", help="the .npz episode set (read only)")
    conv.add_argument("dst", help="new folder for the v3.0 dataset")
    conv.add_argument("--vcodec", default=None, help="video codec (default libsvtav1, LeRobot's; else h264)")
    rep = verbs.add_parser("repair", help="finish or undo an episode write that a crash interrupted")
    rep.add_argument("path", help="LeRobot v3.0 dataset folder")
    p.set_defaults(func=run, verb=None)


def run(args: argparse.Namespace) -> int:
    from edgedp.datasets import DatasetError, require

    if args.verb is None:
        raise UserError("a verb is needed: info, convert or repair (edgedp dataset -h)")
    try:
        require()
        return {"info": _info, "convert": _convert, "repair": _repair}[args.verb](args)
    except DatasetError as exc:
        raise UserError(str(exc)) from None


def _size(root: Path, sub: str) -> int:
    base = root / sub
    return sum(p.stat().st_size for p in base.rglob("*") if p.is_file()) if base.exists() else 0


def summary(path: str | Path) -> dict:
    """What `dataset info` prints: format, counts, features and bytes per part of the folder."""
    from edgedp.datasets.reader import LeRobotDataset, is_npz_set
    from edgedp.sim_task.dataset import EpisodeDataset

    root = Path(path)
    if not is_npz_set(root):  # v3.0, or garbage: LeRobotDataset says what is wrong with it
        ds = LeRobotDataset(root)
        doc = {"format": f"LeRobot {ds.info['codebase_version']}", "episodes": len(ds), "frames": ds.total_frames,
               "fps": ds.fps, "tasks": ds.tasks, "robot_type": ds.info.get("robot_type"),
               "features": {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in ds.features.items()},
               "files": {"data": len(list((root / "data").glob("*/*.parquet"))),
                         "videos": len(list((root / "videos").glob("*/*/*.mp4")))},
               "codec": (ds.features[ds.video_keys[0]].get("info", {}).get("video.codec") if ds.video_keys else None)}
    else:
        ds = EpisodeDataset(root)
        doc = {"format": "edgedp .npz episodes (convert with `edgedp dataset convert`)", "episodes": len(ds),
               "frames": ds.total_frames, "fps": ds.fps, "tasks": [ds.info.get("task")],
               "features": {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in ds.info["features"].items()},
               "files": {"data": len(list((root / "data").glob("*/*.npz")))}}
    doc["bytes"] = {part: _size(root, part) for part in ("meta", "data", "videos")}
    doc["bytes"]["total"] = sum(doc["bytes"].values())
    return doc


def _info(args) -> int:
    from edgedp.console import make_console

    doc = summary(args.path)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    console = make_console()
    b = doc["bytes"]
    console.print(f"{args.path}: {doc['format']}; {doc['episodes']} episodes, {doc['frames']} frames at {doc['fps']:g} fps; "
                  f"{b['total'] / 1e6:.2f} MB (data {b['data'] / 1e6:.2f}, videos {b['videos'] / 1e6:.2f}, "
                  f"meta {b['meta'] / 1e6:.2f})", highlight=False)
    for k, v in doc["features"].items():
        console.print(f"  {k:<28} {v['dtype']:<8} {v['shape']}", highlight=False)
    if doc.get("tasks"):
        console.print(f"  tasks: {doc['tasks']}", highlight=False)
    return 0


def _convert(args) -> int:
    from edgedp.console import make_console
    from edgedp.datasets.convert import convert_npz

    console = make_console()
    started = time.monotonic()
    writer = convert_npz(args.src, args.dst, vcodec=args.vcodec)
    console.print(f"{args.dst}: {writer.num_episodes} episodes ({writer.total_frames} frames) written as LeRobot v3.0 "
                  f"in {time.monotonic() - started:.1f} s (video {writer.vcodec})", highlight=False)
    return 0


def _repair(args) -> int:
    from edgedp.datasets import commit
    from edgedp.datasets.reader import read_info

    root = Path(args.path)
    read_info(root)  # a missing or garbage info.json is refused before anything is deleted or renamed
    done = commit.recover(root)
    what = ("finished the committed episode's renames" if done["finished"] else "no committed episode was pending")
    print(f"{root}: {what}; removed {done['removed']} staged file(s) of an uncommitted episode")
    return 0
