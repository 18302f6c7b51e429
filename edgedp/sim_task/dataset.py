"""edgedp's first episode format (.npz per episode): reading, conversion input, and flattening for training.

`edgedp record` now writes LeRobot v3.0 (edgedp/datasets); this format stays readable (training, INT8
calibration) and `edgedp dataset convert OLD NEW` turns a set into v3.0. The writer stays for tests and
conversion fixtures.

Layout (LeRobot v2.1's directory and metadata names; one compressed ``.npz`` per episode stands in
for its parquet + mp4 files so that nothing beyond numpy is needed)::

    DATA/
      meta/info.json          format, fps, features (dtype, shape, names), scene/expert settings, totals
      meta/episodes.jsonl     one JSON line per complete episode: episode_index, length, file, seed, ...
      data/chunk-000/episode_000000.npz
                              observation.image (L, H, W, 3) uint8, observation.state (L, J) float32,
                              action (L, J) float32, timestamp (L,) float32, frame_index (L,) int64

``meta/episodes.jsonl`` is the single source of truth: an episode exists when its line is there.
Crash safety comes from the order of writes. An episode file is written under a temporary name,
fsynced and renamed into place; only then is the index rewritten (temporary file + ``os.replace``)
with one more line. A crash at any instant leaves the old index (the new episode is an orphan file
that the next ``open_for_append`` deletes) or the new one (the episode is complete): the earlier
episodes are never touched. ``info.json`` totals are rewritten after the index and repaired from
it when they disagree.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from edgedp.sim_task.expert import Episode

FORMAT_NAME = "edgedp-episodes"
FORMAT_VERSION = 1
CHUNK_SIZE = 1000  # episodes per data/chunk-XXX folder, as LeRobot
IMAGE_KEY = "observation.image"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ARRAY_KEYS = (IMAGE_KEY, STATE_KEY, ACTION_KEY, "timestamp", "frame_index")


from edgedp.datasets import DatasetError  # one error type for both formats (raised with the file named)
from firmware_bridge.atomic_file import atomic_write, atomic_write_text  # noqa: F401 (also used by datasets/)




def episode_file(index: int) -> str:
    return f"data/chunk-{index // CHUNK_SIZE:03d}/episode_{index:06d}.npz"


def _features(image_size: int, n_joints: int, joint_names: list[str]) -> dict[str, Any]:
    return {
        IMAGE_KEY: {"dtype": "uint8", "shape": [image_size, image_size, 3], "names": ["height", "width", "channel"]},
        STATE_KEY: {"dtype": "float32", "shape": [n_joints], "names": joint_names, "unit": "rad"},
        ACTION_KEY: {"dtype": "float32", "shape": [n_joints], "names": joint_names, "unit": "rad",
                     "meaning": "joint target one period after the observation"},
        "timestamp": {"dtype": "float32", "shape": [1], "unit": "s"},
        "frame_index": {"dtype": "int64", "shape": [1]},
    }


class DatasetWriter:
    """Appends episodes to a dataset directory, each one atomically (see the module docstring)."""

    def __init__(self, root: Path, info: dict[str, Any], episodes: list[dict[str, Any]]):
        self.root = root
        self.info = info
        self.episodes = episodes

    @classmethod
    def create(cls, root: str | os.PathLike, fps: float, image_size: int, joint_names: list[str],
               settings: dict[str, Any]) -> "DatasetWriter":
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetError(f"{root}: exists and is not empty (choose a new folder, or --append to a dataset)")
        info = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "layout": "lerobot-v2.1-like, npz episodes",
            "fps": float(fps), "chunks_size": CHUNK_SIZE, "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.npz",
            "features": _features(image_size, len(joint_names), joint_names),
            "total_episodes": 0, "total_frames": 0, **settings,
        }
        (root / "meta").mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "meta" / "episodes.jsonl", "")
        atomic_write_text(root / "meta" / "info.json", json.dumps(info, indent=2) + "\n")
        return cls(root, info, [])

    @classmethod
    def open_for_append(cls, root: str | os.PathLike) -> "DatasetWriter":
        """Reopen a dataset (e.g. after a crash): orphan episode files and temporaries are removed."""
        ds = EpisodeDataset(root)
        writer = cls(ds.root, ds.info, list(ds.episodes))
        indexed = {ds.root / e["file"] for e in ds.episodes}
        for path in (ds.root / "data").rglob("*") if (ds.root / "data").exists() else []:
            if path.is_file() and path not in indexed:
                path.unlink()
        for path in (ds.root / "meta").glob(".*.tmp"):  # firmware_bridge.atomic_file's temporaries
            path.unlink()
        writer._write_info()
        return writer

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def add(self, episode: Episode) -> dict[str, Any]:
        index = len(self.episodes)
        rel = episode_file(index)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(episode.state)
        arrays = {IMAGE_KEY: episode.image, STATE_KEY: episode.state.astype(np.float32),
                  ACTION_KEY: episode.action.astype(np.float32), "timestamp": episode.timestamp.astype(np.float32),
                  "frame_index": np.arange(n, dtype=np.int64)}
        # Task-specific per-frame arrays (Push-T's keypoints), declared in info["features"] by the recorder.
        arrays.update({k: np.asarray(v) for k, v in getattr(episode, "extras", {}).items()})
        atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
        entry = {"episode_index": index, "length": n, "file": rel, **episode.info}
        lines = "".join(json.dumps(e) + "\n" for e in [*self.episodes, entry])
        atomic_write_text(self.root / "meta" / "episodes.jsonl", lines)  # the commit point
        self.episodes.append(entry)
        self._write_info()
        return entry

    def _write_info(self) -> None:
        self.info["total_episodes"] = len(self.episodes)
        self.info["total_frames"] = int(sum(e["length"] for e in self.episodes))
        atomic_write_text(self.root / "meta" / "info.json", json.dumps(self.info, indent=2) + "\n")


@dataclass
class Flat:
    """All episodes concatenated, as the original implementation's replay buffer holds them."""

    image: Optional[np.ndarray]  # (N, H, W, 3) uint8; None when read with images=False (state-only training)
    state: np.ndarray  # (N, J) float32
    action: np.ndarray  # (N, J) float32
    episode_ends: np.ndarray  # (E,) int64: exclusive end of each episode in the flat arrays
    extra: dict = field(default_factory=dict)  # feature -> (N, D) float32: task-specific features (Push-T keypoints)


class EpisodeDataset:
    """Read access to a dataset directory written by :class:`DatasetWriter`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        index_path = self.root / "meta" / "episodes.jsonl"
        if not self.root.is_dir():
            raise DatasetError(f"dataset not found: {self.root}")
        if not info_path.is_file() or not index_path.is_file():
            raise DatasetError(f"{self.root}: not an edgedp episode dataset (no meta/info.json and meta/episodes.jsonl)")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{info_path}: not valid JSON ({exc})") from None
        if self.info.get("format") != FORMAT_NAME:
            raise DatasetError(f"{info_path}: format {self.info.get('format')!r}, expected {FORMAT_NAME!r}")
        if int(self.info.get("format_version", 0)) > FORMAT_VERSION:
            raise DatasetError(f"{info_path}: format_version {self.info.get('format_version')} is newer than this edgedp reads")
        self.episodes: list[dict[str, Any]] = []
        for n, line in enumerate(index_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{index_path}:{n}: not valid JSON ({exc})") from None
            if entry.get("episode_index") != len(self.episodes):
                raise DatasetError(f"{index_path}:{n}: episode_index {entry.get('episode_index')}, expected {len(self.episodes)}")
            self.episodes.append(entry)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def extra_keys(self) -> tuple:
        """Per-frame features beyond the fixed ones (declared in info.json's features by the recorder)."""
        return tuple(k for k in self.info.get("features", {}) if k not in ARRAY_KEYS)

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def total_frames(self) -> int:
        return int(sum(e["length"] for e in self.episodes))

    def load_episode(self, index: int, images: bool = True) -> dict[str, np.ndarray]:
        """``images=False`` leaves observation.image unread (np.load decompresses each array on access)."""
        entry = self.episodes[index]
        path = self.root / entry["file"]
        if not path.is_file():
            raise DatasetError(f"{path}: episode {index} is listed in meta/episodes.jsonl but its file is missing")
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ARRAY_KEYS + self.extra_keys if images or k != IMAGE_KEY}
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{path}: unreadable episode file ({exc})") from None
        for k, v in arrays.items():
            if len(v) != entry["length"]:
                raise DatasetError(f"{path}: {k} has {len(v)} frames, the index says {entry['length']}")
        return arrays

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.load_episode(i)

    def flat(self, limit: Optional[int] = None, images: bool = True) -> Flat:
        eps = [self.load_episode(i, images) for i in range(len(self) if limit is None else min(limit, len(self)))]
        if not eps:
            raise DatasetError(f"{self.root}: the dataset has no episodes")
        return Flat(
            image=np.concatenate([e[IMAGE_KEY] for e in eps]) if images else None,
            state=np.concatenate([e[STATE_KEY] for e in eps]).astype(np.float32),
            action=np.concatenate([e[ACTION_KEY] for e in eps]).astype(np.float32),
            episode_ends=np.cumsum([len(e[STATE_KEY]) for e in eps]).astype(np.int64),
            extra={k: np.concatenate([e[k] for e in eps]).astype(np.float32) for k in self.extra_keys},
        )
