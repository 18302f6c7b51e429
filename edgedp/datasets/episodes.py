"""One way in for training and calibration: a v3.0 folder or an old ``.npz`` set, seen as policy-keyed episodes.

Training (edgedp/sim_task/train.py) and INT8 calibration (edgedp/compile/quantize.py) want episodes with
the policy's keys (observation.image, observation.state, action). A LeRobot dataset names its features its
own way (observation.images.top, observation.state, action, ...): :class:`PolicyEpisodes` maps them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edgedp.datasets import DatasetError

IMAGE_KEY = "observation.image"
STATE_KEY = "observation.state"
ACTION_KEY = "action"


class PolicyEpisodes:
    """A v3.0 dataset with EpisodeDataset's reading interface, its features renamed to the policy's keys."""

    def __init__(self, root: str | Path, image_key: Optional[str] = None, state_key: Optional[str] = None,
                 action_key: Optional[str] = None):
        from edgedp.datasets.reader import LeRobotDataset, resolve_keys

        self.ds = LeRobotDataset(root)
        self.root = self.ds.root
        self.keys = resolve_keys(self.ds, image_key, state_key, action_key)
        f = self.ds.features
        self.info = {**self.ds.info, "features": {IMAGE_KEY: f[self.keys.image], STATE_KEY: f[self.keys.state],
                                                  ACTION_KEY: f[self.keys.action]}}
        for key, what in ((self.keys.state, "state"), (self.keys.action, "action")):
            if len(f[key]["shape"]) != 1:
                raise DatasetError(f"{root}: {what} feature {key!r} has shape {f[key]['shape']}; a vector is needed")
        self.episodes = [{"episode_index": i, "length": int(e["length"])} for i, e in enumerate(self.ds.episodes)]

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def fps(self) -> float:
        return float(self.ds.fps)

    @property
    def total_frames(self) -> int:
        return self.ds.total_frames

    def load_episode(self, index: int) -> dict[str, np.ndarray]:
        k = self.keys
        ep = self.ds.load_episode(index, [k.image, k.state, k.action, "timestamp", "frame_index"])
        return {IMAGE_KEY: ep[k.image], STATE_KEY: ep[k.state].astype(np.float32).reshape(len(ep[k.state]), -1),
                ACTION_KEY: ep[k.action].astype(np.float32).reshape(len(ep[k.action]), -1),
                "timestamp": ep["timestamp"].astype(np.float32), "frame_index": ep["frame_index"]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.load_episode(i)

    def flat(self, limit: Optional[int] = None):
        from edgedp.sim_task.dataset import Flat

        n = len(self) if limit is None else min(limit, len(self))
        if n == 0:
            raise DatasetError(f"{self.root}: the dataset has no episodes")
        eps = [self.load_episode(i) for i in range(n)]
        return Flat(image=np.concatenate([e[IMAGE_KEY] for e in eps]),
                    state=np.concatenate([e[STATE_KEY] for e in eps]),
                    action=np.concatenate([e[ACTION_KEY] for e in eps]),
                    episode_ends=np.cumsum([len(e[STATE_KEY]) for e in eps]).astype(np.int64))


def open_episodes(path: str | Path, image_key: Optional[str] = None, state_key: Optional[str] = None,
                  action_key: Optional[str] = None):
    """A v3.0 dataset (LeRobot's format, what `edgedp record` writes) or an old edgedp ``.npz`` episode set."""
    from edgedp.datasets.reader import is_v3
    from edgedp.sim_task.dataset import EpisodeDataset

    if is_v3(path):
        return PolicyEpisodes(path, image_key, state_key, action_key)
    if any(k is not None for k in (image_key, state_key, action_key)) and (Path(path) / "meta/episodes.jsonl").exists():
        raise DatasetError(f"{path}: an .npz episode set has fixed keys; --image-key/--state-key/--action-key "
                           f"apply to LeRobot datasets")
    return EpisodeDataset(path)
