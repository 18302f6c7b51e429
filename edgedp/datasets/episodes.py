"""One way in for training and calibration: a v3.0 folder or an old ``.npz`` set, seen as policy-keyed episodes.

Training (edgedp/sim_task/train.py) and INT8 calibration (edgedp/compile/quantize.py) want episodes with
the policy's keys (observation.image, observation.state, action). A LeRobot dataset names its features its
own way (observation.images.top, observation.state, action, ...): :class:`PolicyEpisodes` maps them.
Other vector ``observation.*`` features (Push-T's ``observation.environment_state``) keep their names and
come along as extra state features, as the ``.npz`` format's extra per-frame arrays do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edgedp.datasets import DatasetError

IMAGE_KEY = "observation.image"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
NUMERIC = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def extra_state_keys(features: dict[str, dict], used: tuple) -> tuple:
    """Numeric vector ``observation.*`` features not already mapped to the policy's keys: task-specific state
    inputs (Push-T's keypoints). Training fits a normalizer to each; a policy that does not use one ignores it.
    A feature named like a policy key but not mapped to it stays out (it would shadow the mapped one)."""
    return tuple(k for k, ft in features.items()
                 if k.startswith("observation.") and k not in (*used, IMAGE_KEY, STATE_KEY) and ft["dtype"] in NUMERIC
                 and len(ft["shape"]) == 1)


class PolicyEpisodes:
    """A v3.0 dataset with EpisodeDataset's reading interface, its features renamed to the policy's keys."""

    def __init__(self, root: str | Path, image_key: Optional[str] = None, state_key: Optional[str] = None,
                 action_key: Optional[str] = None):
        from edgedp.datasets.reader import LeRobotDataset, resolve_keys

        self.ds = LeRobotDataset(root)
        self.root = self.ds.root
        self.keys = resolve_keys(self.ds, image_key, state_key, action_key)
        f = self.ds.features
        self.extra_keys = extra_state_keys(f, (self.keys.image, self.keys.state, self.keys.action))
        self.info = {**self.ds.info, "features": {IMAGE_KEY: f[self.keys.image], STATE_KEY: f[self.keys.state],
                                                  ACTION_KEY: f[self.keys.action],
                                                  **{k: f[k] for k in self.extra_keys}}}
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

    def load_episode(self, index: int, images: bool = True) -> dict[str, np.ndarray]:
        """``images=False`` leaves the camera feature out, undecoded: decoding every video frame is most of the
        cost of reading a dataset, and a state-only policy (Push-T on keypoints) never looks at them."""
        k = self.keys
        cam = [k.image] if images else []
        ep = self.ds.load_episode(index, [*cam, k.state, k.action, "timestamp", "frame_index", *self.extra_keys])
        return {**({IMAGE_KEY: ep[k.image]} if images else {}), STATE_KEY: _vectors(ep[k.state]),
                ACTION_KEY: _vectors(ep[k.action]), "timestamp": ep["timestamp"].astype(np.float32),
                "frame_index": ep["frame_index"], **{key: _vectors(ep[key]) for key in self.extra_keys}}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.load_episode(i)

    def flat(self, limit: Optional[int] = None, images: bool = True):
        """All episodes concatenated; ``images=False``: ``image`` is None and no video frame is decoded."""
        from edgedp.sim_task.dataset import Flat

        n = len(self) if limit is None else min(limit, len(self))
        if n == 0:
            raise DatasetError(f"{self.root}: the dataset has no episodes")
        eps = [self.load_episode(i, images) for i in range(n)]
        return Flat(image=np.concatenate([e[IMAGE_KEY] for e in eps]) if images else None,
                    state=np.concatenate([e[STATE_KEY] for e in eps]),
                    action=np.concatenate([e[ACTION_KEY] for e in eps]),
                    episode_ends=np.cumsum([len(e[STATE_KEY]) for e in eps]).astype(np.int64),
                    extra={key: np.concatenate([e[key] for e in eps]) for key in self.extra_keys})


def _vectors(a: np.ndarray) -> np.ndarray:
    """(N,) or (N, D) values as (N, D) float32, the shape training gathers windows from."""
    return a.astype(np.float32).reshape(len(a), -1)


def open_episodes(path: str | Path, image_key: Optional[str] = None, state_key: Optional[str] = None,
                  action_key: Optional[str] = None):
    """A v3.0 dataset (LeRobot's format, what `edgedp record` writes) or an old edgedp ``.npz`` episode set."""
    from edgedp.datasets.reader import is_npz_set
    from edgedp.sim_task.dataset import EpisodeDataset

    if not is_npz_set(path):  # v3.0, or not a dataset: LeRobotDataset names what is wrong
        return PolicyEpisodes(path, image_key, state_key, action_key)
    if any(k is not None for k in (image_key, state_key, action_key)) and (Path(path) / "meta/episodes.jsonl").exists():
        raise DatasetError(f"{path}: an .npz episode set has fixed keys; --image-key/--state-key/--action-key "
                           f"apply to LeRobot datasets")
    return EpisodeDataset(path)
