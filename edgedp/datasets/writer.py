"""Write LeRobot v3.0 datasets episode by episode, crash-safely (edgedp/datasets/commit.py).

Where an episode goes follows LeRobot 0.4.4's LeRobotDataset._save_episode_data / _save_episode_video and
LeRobotDatasetMetadata._save_episode_metadata: its frame rows are appended to the current data file, its
video to the current mp4 of each camera, its row to the current episodes-metadata file, until a file would
pass data_files_size_in_mb / video_files_size_in_mb; then the next file (chunk-XXX/file-YYY, chunks_size
files per chunk folder) starts. Frame rows carry index (global), episode_index, frame_index, timestamp
(frame_index / fps) and task_index; the episode row carries episode_index, tasks, length, data/chunk_index,
data/file_index, dataset_from_index, dataset_to_index, videos/<key>/{chunk_index, file_index,
from_timestamp, to_timestamp}, stats/<feature>/<stat>, meta/episodes/{chunk_index, file_index}.

Unlike LeRobot, which keeps parquet writers open across episodes (a crash loses the open file's episodes),
each episode replaces the files it touches with complete copies, committed through a journal.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgedp.datasets import DatasetError, require
from edgedp.datasets import commit as journal
from edgedp.datasets import stats as dstats
from edgedp.datasets import tables, video
from edgedp.datasets.schema import (DATA_PATH, DEFAULT_FEATURES, EPISODES_PATH, INFO_PATH, STATS_PATH, TASKS_PATH,
                                    VIDEO_PATH, data_columns, data_schema, make_info, next_file, video_keys)

MB = 1024 * 1024


class DatasetWriter:
    """Appends episodes to a v3.0 dataset folder. Use :meth:`create` or :meth:`open_for_append`."""

    def __init__(self, root: Path, info: dict, episodes: list[dict], tasks: list[str], stats: Optional[dict],
                 vcodec: str):
        self.root = root
        self.info = info
        self.episodes = episodes  # rows of meta/episodes (without the stats columns)
        self.tasks = tasks
        self.stats = stats
        self.vcodec = vcodec
        self.features = info["features"]
        self.schema = data_schema(self.features)
        self.write_seconds = 0.0  # time spent in add_episode (encode + files + commit), for reports

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, fps: int, features: dict[str, dict], robot_type: Optional[str] = None,
               extra: Optional[dict] = None, vcodec: Optional[str] = None, **chunk_settings: int) -> "DatasetWriter":
        """A new dataset: ``features`` are the user's (images as dtype "video"); the defaults are added."""
        require()
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetError(f"{root}: exists and is not empty (choose a new folder, or --append to a dataset)")
        if int(fps) != fps or fps <= 0:
            raise DatasetError(f"fps must be a positive whole number (LeRobot stores an int), got {fps}")
        for name in features:
            if name in DEFAULT_FEATURES:
                raise DatasetError(f"feature {name!r} is one LeRobot adds itself")
        try:
            info = make_info(int(fps), {k: dict(v) for k, v in features.items()}, robot_type, extra, **chunk_settings)
            data_schema(info["features"])
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        codec = video.pick_vcodec(vcodec) if video_keys(info["features"]) else (vcodec or "")
        if codec:
            info.setdefault("edgedp", {})["vcodec"] = codec
        (root / "meta").mkdir(parents=True, exist_ok=True)
        staged = journal.staged_path(root / INFO_PATH)
        staged.write_text(json.dumps(info, indent=4) + "\n")
        journal.commit(root, [(staged, root / INFO_PATH)])
        return cls(root, info, [], [], None, codec)

    @classmethod
    def open_for_append(cls, root: str | Path) -> "DatasetWriter":
        """Reopen a dataset (also after a crash: a committed episode is finished, an uncommitted one removed)."""
        require()
        from edgedp.datasets.reader import LeRobotDataset, read_info

        root = Path(root)
        read_info(root)  # missing or garbage info.json: refused before recover() deletes or renames anything
        journal.recover(root)
        ds = LeRobotDataset(root)
        stats = dstats.from_json(json.loads((root / STATS_PATH).read_text())) if (root / STATS_PATH).exists() else None
        codec = ds.info.get("edgedp", {}).get("vcodec") or (video.pick_vcodec() if ds.video_keys else "")
        return cls(root, ds.info, list(ds.episodes), list(ds.tasks), stats, codec)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def total_frames(self) -> int:
        return int(self.info["total_frames"])

    # ---- one episode ---------------------------------------------------------------------------
    def add_episode(self, frames: dict[str, np.ndarray], task: str, extra: Optional[dict] = None,
                    attachments: Optional[dict] = None) -> dict:
        """Append one episode: ``frames`` holds every user feature as an array with a leading frame axis.

        ``attachments`` (name -> pyarrow Table) are per-episode side tables that do not fit LeRobot's one row
        per frame (a run's servo-rate commands): written to edgedp/<name>/episode_XXXXXX.parquet in the same
        commit, outside the folders LeRobot reads."""
        started = time.perf_counter()
        columns, n = self._validate(frames)
        index = len(self.episodes)
        start = self.total_frames
        tasks = self.tasks if task in self.tasks else [*self.tasks, task]
        columns.update({
            "timestamp": (np.arange(n) / self.info["fps"]).astype(np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, index, dtype=np.int64),
            "index": np.arange(start, start + n, dtype=np.int64),
            "task_index": np.full(n, tasks.index(task), dtype=np.int64),
        })
        ep_stats = dstats.episode_stats(columns, self.features)
        renames: list[tuple[Path, Path]] = []
        row: dict[str, Any] = {"episode_index": index, "tasks": [task], "length": n}
        try:
            row.update(self._stage_data(columns, n, start, renames))
            for key in video_keys(self.features):
                row.update(self._stage_video(key, columns[key], renames))
            row.update(dstats.flatten(ep_stats))
            if extra:
                row["edgedp/info"] = json.dumps(extra, default=_plain)
            for name, table in (attachments or {}).items():
                import pyarrow.parquet as pq

                target = self.root / "edgedp" / name / f"episode_{index:06d}.parquet"
                staged = journal.staged_path(target)
                pq.write_table(table, staged)
                renames.append((staged, target))
            row.update(self._stage_episode_row(row, renames))
            new_stats = dstats.aggregate([self.stats, ep_stats]) if self.stats else ep_stats
            info = json.loads(json.dumps(self.info))
            info["total_episodes"] = index + 1
            info["total_frames"] = start + n
            info["total_tasks"] = len(tasks)
            info["splits"] = {"train": f"0:{index + 1}"}
            if index == 0:
                for key in video_keys(self.features):
                    info["features"][key]["info"] = video.info(self._staged_or_final(renames, key))
            if tasks != self.tasks:
                staged = journal.staged_path(self.root / TASKS_PATH)
                tables.write_tasks(staged, tasks)
                renames.append((staged, self.root / TASKS_PATH))
            for target, text in ((STATS_PATH, json.dumps(dstats.to_json(new_stats), indent=4)),
                                 (INFO_PATH, json.dumps(info, indent=4))):
                staged = journal.staged_path(self.root / target)
                staged.write_text(text + "\n")
                renames.append((staged, self.root / target))
        except BaseException:
            journal.discard(renames)
            raise
        journal.commit(self.root, renames)  # the commit point: from here the episode exists
        self.info, self.stats, self.tasks = info, new_stats, tasks
        self.features = info["features"]
        self.episodes.append({k: v for k, v in row.items() if not k.startswith("stats/")})
        self.write_seconds += time.perf_counter() - started
        return self.episodes[-1]

    def _validate(self, frames: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        user = [k for k in self.features if k not in DEFAULT_FEATURES]
        missing = [k for k in user if k not in frames]
        unknown = [k for k in frames if k not in self.features]
        if missing or unknown:
            raise DatasetError(f"episode features do not match the dataset: missing {missing}, unknown {unknown}")
        lengths = {k: len(frames[k]) for k in user}
        n = lengths[user[0]] if user else 0
        if n < 1 or any(v != n for v in lengths.values()):
            raise DatasetError(f"episode features need the same number (>= 1) of frames, got {lengths}")
        out = {}
        for k in user:
            ft, a = self.features[k], np.asarray(frames[k])
            if ft["dtype"] == "video":
                if a.dtype != np.uint8 or a.shape[1:] != tuple(ft["shape"]):
                    raise DatasetError(f"{k}: frames are {a.shape[1:]} {a.dtype}, the dataset stores {tuple(ft['shape'])} uint8")
            else:
                width = int(np.prod(ft["shape"]))
                if a.reshape(n, -1).shape[1] != width:
                    raise DatasetError(f"{k}: {a.shape[1:]} values per frame, the dataset stores {ft['shape']}")
                a = a.reshape(n, -1) if ft["shape"] != [1] else a.reshape(n)
                if ft["dtype"] != "string":
                    if not np.all(np.isfinite(a)) and a.dtype.kind == "f":
                        raise DatasetError(f"{k}: contains NaN or infinite values")
                    a = a.astype(ft["dtype"])
            out[k] = a
        return out, n

    # ---- staging the files one episode touches -----------------------------------------------------
    def _current(self, prefix: str) -> Optional[tuple[int, int]]:
        if not self.episodes or f"{prefix}/chunk_index" not in self.episodes[-1]:
            return None
        last = self.episodes[-1]
        return int(last[f"{prefix}/chunk_index"]), int(last[f"{prefix}/file_index"])

    def _target(self, prefix: str, template: str, limit_mb: float, add_bytes: float, **fmt) -> tuple[int, int, bool]:
        """(chunk, file, continue_existing): the current file unless adding would pass the size limit."""
        cur = self._current(prefix)
        if cur is None:
            return 0, 0, False
        path = self.root / template.format(chunk_index=cur[0], file_index=cur[1], **fmt)
        if path.exists() and path.stat().st_size + add_bytes < limit_mb * MB:
            return cur[0], cur[1], True
        c, f = next_file(cur[0], cur[1], int(self.info["chunks_size"]))
        return c, f, False

    def _stage_data(self, columns: dict, n: int, start: int, renames: list) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = tables.frame_table({k: columns[k] for k in data_columns(self.features)}, self.schema)
        est = table.nbytes  # uncompressed: an upper bound of what the file grows by
        c, f, cont = self._target("data", DATA_PATH, self.info["data_files_size_in_mb"], est)
        target = self.root / DATA_PATH.format(chunk_index=c, file_index=f)
        if cont:
            table = pa.concat_tables([pq.read_table(target, schema=self.schema), table])
        staged = journal.staged_path(target)
        pq.write_table(table, staged, compression="snappy")
        renames.append((staged, target))
        return {"data/chunk_index": c, "data/file_index": f, "dataset_from_index": start, "dataset_to_index": start + n}

    def _stage_video(self, key: str, frames: np.ndarray, renames: list) -> dict:
        fps = int(self.info["fps"])
        probe = journal.staged_path(self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))
        try:
            video.encode(frames, probe, fps, self.vcodec)
            ep_seconds = video.duration_s(probe)
        except BaseException:
            probe.unlink(missing_ok=True)
            raise
        c, f, cont = self._target(f"videos/{key}", VIDEO_PATH, self.info["video_files_size_in_mb"],
                                  probe.stat().st_size, video_key=key)
        target = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
        staged = journal.staged_path(target)
        if cont:
            try:
                video.concatenate([target, probe], staged)
            finally:
                probe.unlink(missing_ok=True)
            offset = float(self.episodes[-1][f"videos/{key}/to_timestamp"])
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(probe), str(staged))
            offset = 0.0
        renames.append((staged, target))
        return {f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f,
                f"videos/{key}/from_timestamp": offset, f"videos/{key}/to_timestamp": offset + ep_seconds}

    def _staged_or_final(self, renames: list, key: str) -> Path:
        for staged, target in renames:
            if f"videos/{key}/" in str(target):
                return staged
        raise DatasetError(f"no video staged for {key}")

    def _stage_episode_row(self, row: dict, renames: list) -> dict:
        row_bytes = len(json.dumps(row, default=_plain))
        c, f, cont = self._target("meta/episodes", EPISODES_PATH, self.info["data_files_size_in_mb"], row_bytes)
        row = {**row, "meta/episodes/chunk_index": c, "meta/episodes/file_index": f}
        target = self.root / EPISODES_PATH.format(chunk_index=c, file_index=f)
        staged = journal.staged_path(target)
        if cont:
            import pyarrow.parquet as pq

            schema = pq.read_schema(target)
            tables.write_rows(staged, [*tables.read_rows(target), row], like=schema)
        else:
            tables.write_rows(staged, [row])
        renames.append((staged, target))
        return {"meta/episodes/chunk_index": c, "meta/episodes/file_index": f}


def _plain(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)
