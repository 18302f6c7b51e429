"""Read LeRobot v3.0 datasets from a local folder: edgedp's own and anyone else's (LeRobot-recorded data).

What is read and how follows LeRobot 0.4.4: LeRobotDatasetMetadata.load_metadata (info.json, tasks.parquet,
meta/episodes/*/*.parquet sorted by path, stats.json), get_data_file_path / get_video_file_path (the episode
row's chunk and file indices into data_path / video_path), _query_videos (a frame's video time is the
episode's from_timestamp plus the frame's timestamp). Nothing here imports LeRobot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edgedp.datasets import DatasetError, require
from edgedp.datasets import commit as journal
from edgedp.datasets import tables, video
from edgedp.datasets.schema import INFO_PATH, STATS_PATH, TASKS_PATH, video_keys


def is_v3(root: str | Path) -> bool:
    p = Path(root) / INFO_PATH
    if not p.is_file():
        return False
    try:
        return str(json.loads(p.read_text()).get("codebase_version", "")).startswith("v3")
    except (OSError, ValueError):
        return False


class LeRobotDataset:
    """A v3.0 dataset folder: ``info``, ``episodes`` (rows, no stats columns), ``tasks``, ``load_episode(i)``."""

    def __init__(self, root: str | Path):
        require()
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not self.root.is_dir():
            raise DatasetError(f"dataset not found: {self.root}")
        if not info_path.is_file():
            raise DatasetError(f"{self.root}: not a LeRobot dataset (no {INFO_PATH})")
        try:
            self.info = json.loads(info_path.read_text())
        except ValueError as exc:
            raise DatasetError(f"{info_path}: not valid JSON ({exc})") from None
        version = str(self.info.get("codebase_version", ""))
        if self.info.get("format") == "edgedp-episodes":
            raise DatasetError(f"{self.root}: an old edgedp .npz episode set; `edgedp dataset convert {self.root} NEW` "
                               f"makes a LeRobot v3.0 copy (training reads both)")
        if not version.startswith("v3"):
            raise DatasetError(f"{info_path}: codebase_version {version!r}; edgedp reads v3.x (convert older "
                               f"LeRobot sets with lerobot's convert_dataset_v21_to_v30)")
        if (self.root / journal.JOURNAL).exists():
            raise DatasetError(f"{self.root}: an interrupted write left a journal; `edgedp dataset repair "
                               f"{self.root}` (or record --append) finishes or removes it")
        self.features: dict[str, dict] = self.info["features"]
        self.fps = int(self.info["fps"])
        self.tasks = tables.read_tasks(self.root / TASKS_PATH) if (self.root / TASKS_PATH).exists() else []
        self.episodes = self._load_episode_rows()
        self._tables: dict[Path, object] = {}

    def _load_episode_rows(self) -> list[dict]:
        import pyarrow.parquet as pq

        rows: list[dict] = []
        for path in sorted((self.root / "meta" / "episodes").glob("*/*.parquet")):
            cols = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
            rows.extend(tables.read_rows(path, columns=cols))
        for i, r in enumerate(rows):
            if int(r["episode_index"]) != i:
                raise DatasetError(f"{self.root}: episode rows out of order (row {i} is episode {r['episode_index']})")
        total = self.info.get("total_episodes")
        if total is not None and total != len(rows):
            raise DatasetError(f"{self.root}: info.json says {total} episodes, meta/episodes has {len(rows)}")
        return rows

    # ---- shape of the data ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def total_frames(self) -> int:
        return int(sum(int(e["length"]) for e in self.episodes))

    @property
    def video_keys(self) -> list[str]:
        return video_keys(self.features)

    @property
    def image_keys(self) -> list[str]:
        """Camera features: videos, and images stored inside the parquet files (dtype 'image')."""
        return [k for k, ft in self.features.items() if ft["dtype"] in ("video", "image")]

    def stats(self) -> Optional[dict]:
        p = self.root / STATS_PATH
        return json.loads(p.read_text()) if p.exists() else None

    # ---- frames --------------------------------------------------------------------------------
    def _data_table(self, path: Path):
        import pyarrow.parquet as pq

        if path not in self._tables:
            if not path.is_file():
                raise DatasetError(f"{path}: listed in the episode rows but missing")
            self._tables = {path: pq.read_table(path)}  # one file at a time: bounded memory
        return self._tables[path]

    def load_episode(self, index: int, keys: Optional[list[str]] = None) -> dict[str, np.ndarray]:
        """Episode ``index`` as arrays with a leading frame axis; videos decoded to (N, H, W, 3) uint8."""
        import pyarrow.compute as pc

        ep = self.episodes[index]
        n = int(ep["length"])
        wanted = list(self.features) if keys is None else keys
        path = self.root / self.info["data_path"].format(chunk_index=int(ep["data/chunk_index"]),
                                                          file_index=int(ep["data/file_index"]))
        table = self._data_table(path)
        rows = table.filter(pc.equal(table.column("episode_index"), index))
        if rows.num_rows != n:
            raise DatasetError(f"{path}: episode {index} has {rows.num_rows} rows, its episode row says {n}")
        out: dict[str, np.ndarray] = {}
        for key in wanted:
            ft = self.features[key]
            if ft["dtype"] == "video":
                vpath = self.root / self.info["video_path"].format(
                    video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                    file_index=int(ep[f"videos/{key}/file_index"]))
                if not vpath.is_file():
                    raise DatasetError(f"{vpath}: listed in the episode rows but missing")
                ts = rows.column("timestamp").to_numpy()
                if not np.allclose(ts, np.arange(n) / self.fps, atol=1e-4):
                    raise DatasetError(f"{path}: episode {index} timestamps are not frame_index / fps")
                out[key] = video.decode(vpath, float(ep[f"videos/{key}/from_timestamp"]), n, self.fps)
            elif ft["dtype"] == "image":
                out[key] = _decode_images(rows.column(key).to_pylist())
            elif key in rows.column_names:
                out[key] = _column(rows.column(key).combine_chunks(), n)
            else:
                raise DatasetError(f"{path}: feature {key!r} is in info.json but not in the data file")
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.load_episode(i)


def _column(col, n: int) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(n, col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return np.asarray(col.to_pylist())
    return col.to_numpy(zero_copy_only=False)


def _decode_images(cells: list) -> np.ndarray:
    """dtype 'image' columns hold {'bytes': png/jpeg, 'path': ...} structs (datasets.Image)."""
    import io

    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"])).convert("RGB")) for c in cells])


@dataclass
class KeyMap:
    """Which dataset features feed the policy's image, state and action inputs."""

    image: Optional[str]
    state: str
    action: str


def resolve_keys(ds: LeRobotDataset, image: Optional[str] = None, state: Optional[str] = None,
                 action: Optional[str] = None, want_image: bool = True) -> KeyMap:
    """Defaults: the only camera feature, ``observation.state``, ``action``; a named key must exist."""
    def check(name: str, what: str) -> str:
        if name not in ds.features:
            have = ", ".join(k for k in ds.features if k not in ("timestamp", "frame_index", "episode_index", "index",
                                                                  "task_index"))
            raise DatasetError(f"{ds.root}: no feature {name!r} for the {what} (features: {have})")
        return name

    if image is None and want_image:
        cams = ds.image_keys
        if len(cams) != 1:
            raise DatasetError(f"{ds.root}: {len(cams)} camera features ({', '.join(cams) or 'none'}); "
                               f"name the one to train on with --image-key")
        image = cams[0]
    return KeyMap(check(image, "image") if image else None, check(state or "observation.state", "state"),
                  check(action or "action", "action"))
