"""Episode storage: LeRobot v3.0 (parquet + AV1 mp4, edgedp/datasets) against the old .npz layout, same episodes.

The expert's episodes are generated once (not timed); then each format writes all of them into a fresh
folder, crash-safe as `edgedp record` does (v3.0: staged files + journal + renames per episode; .npz: temp
file + rename + index rewrite per episode). Repeats alternate the formats; the table shows the median write
time, the bytes on disk, and the time to read every episode back (decode included), side by side.

    python benchmarks/dataset_write.py --episodes 50 --repeats 3 --out benchmarks/results/dataset_write.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgedp.datasets.convert import episode_frames, sim_features  # noqa: E402
from edgedp.datasets.reader import LeRobotDataset  # noqa: E402
from edgedp.datasets.writer import DatasetWriter  # noqa: E402
from edgedp.sim_task.dataset import DatasetWriter as NpzWriter, EpisodeDataset  # noqa: E402
from edgedp.sim_task.expert import ExpertConfig, TaskConfig, record_episode  # noqa: E402
from edgedp.host_info import cpu_model  # noqa: E402

JOINTS = ["shoulder", "elbow"]


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def write_npz(root: Path, episodes, task: TaskConfig) -> None:
    w = NpzWriter.create(root, 1.0 / task.period, task.image_size, JOINTS, {"task": task.task})
    for ep in episodes:
        w.add(ep)


def read_npz(root: Path) -> int:
    ds = EpisodeDataset(root)
    return sum(len(ds.load_episode(i)["action"]) for i in range(len(ds)))


def write_v3(vcodec: str):
    def write(root: Path, episodes, task: TaskConfig) -> None:
        w = DatasetWriter.create(root, round(1.0 / task.period), sim_features(task.image_size, JOINTS),
                                 robot_type="sim-planar-arm", vcodec=vcodec)
        for ep in episodes:
            w.add_episode(episode_frames(ep), task.task, extra=ep.info)
    return write


def read_v3(root: Path) -> int:
    ds = LeRobotDataset(root)
    return sum(len(ds.load_episode(i)["observation.image"]) for i in range(len(ds)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=30, help="frames per episode (edgedp record's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    task = TaskConfig(steps=args.steps)
    episodes = [record_episode(task, ExpertConfig(), seed) for seed in range(args.episodes)]
    formats = {".npz (old layout)": (write_npz, read_npz), "LeRobot v3.0, AV1 (libsvtav1)": (write_v3("libsvtav1"), read_v3),
               "LeRobot v3.0, H.264 (libx264)": (write_v3("libx264"), read_v3)}
    results = {name: {"write_s": [], "read_s": []} for name in formats}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, (write, read) in formats.items():
                root = Path(tmp) / f"ds{r}-{abs(hash(name))}"
                t = time.perf_counter()
                write(root, episodes, task)
                results[name]["write_s"].append(time.perf_counter() - t)
                t = time.perf_counter()
                frames = read(root)
                results[name]["read_s"].append(time.perf_counter() - t)
                results[name]["bytes"] = folder_bytes(root)
                results[name]["files"] = sum(1 for p in root.rglob("*") if p.is_file())
                results[name]["frames"] = frames
                shutil.rmtree(root)
    base = results[".npz (old layout)"]
    print(f"{args.episodes} episodes x {args.steps} frames, {task.image_size}x{task.image_size} RGB + 2 joints; "
          f"CPU {cpu_model()}, median of {args.repeats}")
    print(f"{'format':<34} {'write s':>8} {'read s':>8} {'MB':>8} {'files':>6} {'size vs .npz':>13}")
    for name, r in results.items():
        r["write_s_median"] = statistics.median(r["write_s"])
        r["read_s_median"] = statistics.median(r["read_s"])
        print(f"{name:<34} {r['write_s_median']:8.2f} {r['read_s_median']:8.2f} {r['bytes'] / 1e6:8.2f} "
              f"{r['files']:6d} {r['bytes'] / base['bytes']:12.3f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"episodes": args.episodes, "steps": args.steps, "image_size": task.image_size,
                                        "cpu": cpu_model(), "repeats": args.repeats, "results": results}, indent=2))
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
