"""The LeRobot v3.0 layout: paths, default features, info.json, and the Arrow types of the parquet files.

Every constant here is read from LeRobot 0.4.4, src/lerobot/datasets/utils.py (DEFAULT_CHUNK_SIZE,
DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB, CHUNK_FILE_PATTERN, DEFAULT_*_PATH,
DEFAULT_FEATURES, create_empty_dataset_info, update_chunk_file_indices, get_hf_features_from_features)
and lerobot_dataset.py (CODEBASE_VERSION). Nothing is copied; the values are what that code writes.
"""
from __future__ import annotations

from typing import Any, Optional

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk-XXX folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100  # a data (and episodes-metadata) parquet file grows up to this
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200  # an mp4 grows up to this, then the next file starts

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"

# Added to every dataset's features after the user's own, in this order (LeRobotDatasetMetadata.create).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

# What LeRobot's encoder uses by default (video_utils.encode_video_frames / _get_codec_options): AV1 through
# SVT-AV1, yuv420p, a key frame every 2 frames (g=2: cheap random access for training), crf 30, preset 12.
DEFAULT_VCODEC = "libsvtav1"
VIDEO_OPTIONS = {"g": 2, "crf": 30, "preset": 12, "pix_fmt": "yuv420p"}

NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: files fill a chunk folder up to chunks_size, then the next folder."""
    if file_index == chunks_size - 1:
        return chunk_index + 1, 0
    return chunk_index, file_index + 1


def make_info(fps: int, features: dict[str, dict], robot_type: Optional[str], extra: Optional[dict] = None,
              chunks_size: int = DEFAULT_CHUNK_SIZE, data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB,
              video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB) -> dict[str, Any]:
    """meta/info.json of an empty dataset, key for key what create_empty_dataset_info writes.

    ``extra`` (edgedp's recording settings) goes under the key "edgedp", which LeRobot ignores.
    """
    all_features = {**features, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}
    for name in all_features:
        if "/" in name:  # utils._validate_feature_names: '/' separates the flattened stats columns
            raise ValueError(f"feature name {name!r} contains '/'")
    has_video = any(ft["dtype"] == "video" for ft in all_features.values())
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": int(chunks_size),
        "data_files_size_in_mb": int(data_files_size_in_mb),
        "video_files_size_in_mb": int(video_files_size_in_mb),
        "fps": int(fps),
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if has_video else None,
        "features": all_features,
    }
    if extra:
        info["edgedp"] = extra
    return info


def video_keys(features: dict[str, dict]) -> list[str]:
    return [k for k, ft in features.items() if ft["dtype"] == "video"]


def data_columns(features: dict[str, dict]) -> list[str]:
    """Columns of data/*.parquet: every feature that is not a video, in info.json order (LeRobot's hf_features)."""
    return [k for k, ft in features.items() if ft["dtype"] != "video"]


def arrow_type(ft: dict[str, Any]):
    """The Arrow type LeRobot's `datasets` features give a column (get_hf_features_from_features):
    shape (1,) -> a scalar Value; shape (n,) -> a fixed-length Sequence (fixed_size_list)."""
    import pyarrow as pa

    dtype, shape = ft["dtype"], list(ft["shape"])
    if dtype == "string":
        return pa.string()
    if dtype not in NUMERIC_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported in data files (use one of {', '.join(NUMERIC_DTYPES)})")
    base = pa.bool_() if dtype == "bool" else pa.from_numpy_dtype(dtype)
    if shape == [1]:
        return base
    if len(shape) == 1:
        return pa.list_(base, int(shape[0]))
    raise ValueError(f"shape {shape}: edgedp writes scalar and 1-D features only (flatten the rest)")


def data_schema(features: dict[str, dict]):
    import pyarrow as pa

    return pa.schema([pa.field(k, arrow_type(features[k])) for k in data_columns(features)])
