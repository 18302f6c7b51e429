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


NPZ_FORMAT = "edgedp-episodes"  # the "format" of an old edgedp .npz set's info.json (sim_task/dataset.py)


def _load_info_doc(root: Path):
    """info.json parsed, or None when it is absent or unreadable (the routing helpers below only look)."""
    try:
        return json.loads((root / INFO_PATH).read_text())
    except (OSError, ValueError):
        return None


def is_npz_set(root: str | Path) -> bool:
    """An old edgedp .npz episode set. Everything else goes to :class:`LeRobotDataset`, whose
    :func:`read_info` names what is wrong with a garbage or foreign info.json (instead of the .npz reader
    saying the set is not an .npz set)."""
    doc = _load_info_doc(Path(root))
    return isinstance(doc, dict) and doc.get("format") == NPZ_FORMAT


def read_info(root: str | Path) -> dict:
    """meta/info.json of a v3.x dataset, checked for what the reader, writer and repair rely on.

    Raises DatasetError naming the file and the problem: missing, empty or truncated, not JSON, not an
    object, an old .npz set, another codebase_version, or fields of the wrong shape. `dataset repair` and
    `record --append` call this before touching anything: a folder whose info.json is garbage is not a
    dataset they may delete staged files from, and a crash never leaves it so (it is replaced by rename).
    """
    root = Path(root)
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{root}: not a LeRobot v3.0 dataset (no {INFO_PATH})")
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None
    if not text.strip():
        raise DatasetError(f"{path}: empty (truncated?); a dataset's info.json is a JSON object")
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON, truncated or damaged ({exc})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: a JSON object is expected, found {json.dumps(info)[:40]}")
    if info.get("format") == NPZ_FORMAT:
        raise DatasetError(f"{root}: an old edgedp .npz episode set; `edgedp dataset convert {root} NEW` "
                           f"makes a LeRobot v3.0 copy (training reads both)")
    version = info.get("codebase_version")
    if not isinstance(version, str) or not version.startswith("v3"):
        raise DatasetError(f"{path}: codebase_version {version!r}; edgedp reads v3.x (convert older "
                           f"LeRobot sets with lerobot's convert_dataset_v21_to_v30)")
    features = info.get("features")
    if not isinstance(features, dict) or not features:
        raise DatasetError(f"{path}: 'features' must be an object of feature name -> {{dtype, shape, ...}}, "
                           f"found {features!r:.60}")
    for name, ft in features.items():
        if not (isinstance(ft, dict) and isinstance(ft.get("dtype"), str) and isinstance(ft.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in ft["shape"])):
            raise DatasetError(f"{path}: feature {name!r} needs a string 'dtype' and a list of ints 'shape', "
                               f"found {ft!r:.60}")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0 or fps != int(fps):
        raise DatasetError(f"{path}: 'fps' must be a positive whole number, found {fps!r}")
    if not isinstance(info.get("data_path"), str):
        raise DatasetError(f"{path}: 'data_path' must be a path pattern string, found {info.get('data_path')!r}")
    if video_keys(features) and not isinstance(info.get("video_path"), str):
        raise DatasetError(f"{path}: 'video_path' must be a path pattern string (the dataset has video features), "
                           f"found {info.get('video_path')!r}")
    return info


class LeRobotDataset:
    """A v3.0 dataset folder: ``info``, ``episodes`` (rows, no stats columns), ``tasks``, ``load_episode(i)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset not found: {self.root}")
        require()
        self.info = read_info(self.root)
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
