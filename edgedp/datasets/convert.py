"""Old edgedp ``.npz`` episode sets -> LeRobot v3.0, one command (`edgedp dataset convert OLD NEW`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from edgedp.datasets import DatasetError
from edgedp.datasets.writer import DatasetWriter

SIM_ROBOT = "sim-planar-arm"


def sim_features(image_size: int | tuple[int, int], joint_names: list[str], image_key: str = "observation.image"
                 ) -> dict[str, dict]:
    """The features of a sim reach recording: one camera (video), joint state and next joint target (radians)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return {
        image_key: {"dtype": "video", "shape": [int(h), int(w), 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [len(joint_names)], "names": list(joint_names)},
        "action": {"dtype": "float32", "shape": [len(joint_names)], "names": list(joint_names)},
    }


def convert_npz(src: str | Path, dst: str | Path, vcodec: Optional[str] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> DatasetWriter:
    """Every episode of an ``.npz`` set, in order, into a new v3.0 folder; the old set is only read."""
    from edgedp.sim_task.dataset import EpisodeDataset

    old = EpisodeDataset(src)
    feats = old.info["features"]
    fps = float(old.info["fps"])
    if abs(fps - round(fps)) > 1e-6:
        raise DatasetError(f"{src}: fps {fps} is not a whole number; LeRobot datasets store an integer fps")
    names = feats["observation.state"].get("names") or [f"joint_{i}" for i in range(feats["observation.state"]["shape"][0])]
    shape = feats["observation.image"]["shape"]
    keep = {k: v for k, v in old.info.items() if k not in ("format", "format_version", "layout", "fps", "chunks_size",
                                                            "data_path", "features", "total_episodes", "total_frames")}
    writer = DatasetWriter.create(dst, int(round(fps)), sim_features((shape[0], shape[1]), names),
                                  robot_type=old.info.get("robot_type", SIM_ROBOT),
                                  extra={**keep, "converted_from": str(Path(src).resolve())}, vcodec=vcodec)
    task = str(old.info.get("task", "reach"))
    for i, entry in enumerate(old.episodes):
        ep = old.load_episode(i)
        extra = {k: v for k, v in entry.items() if k not in ("episode_index", "length", "file")}
        writer.add_episode({"observation.image": ep["observation.image"], "observation.state": ep["observation.state"],
                            "action": ep["action"]}, task, extra=extra)
        if progress is not None:
            progress(i + 1, len(old))
    return writer


def episode_frames(ep) -> dict:
    """An expert Episode (edgedp/sim_task/expert.py) as the frames of :func:`sim_features`."""
    return {"observation.image": ep.image, "observation.state": ep.state, "action": ep.action}
