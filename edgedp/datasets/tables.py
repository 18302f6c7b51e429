"""The parquet tables of a v3.0 dataset: tasks, episode rows, frame rows (pyarrow only, no pandas).

meta/tasks.parquet is what LeRobot writes with ``pandas.DataFrame({"task_index": ...}, index=tasks)
.to_parquet`` (utils.write_tasks) and reads with ``pd.read_parquet`` (utils.load_tasks), then indexes by task
string (``tasks.loc[task]``, ``tasks.iloc[i].name``): a ``task_index`` int64 column plus the task strings as
the pandas index, stored as column ``__index_level_0__`` with the ``pandas`` schema metadata that tells
pandas to restore it as the index. edgedp writes the same bytes' meaning without needing pandas.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

INDEX_COLUMN = "__index_level_0__"


def _pandas_metadata(n_rows: int) -> bytes:
    import pyarrow as pa

    doc = {
        "index_columns": [INDEX_COLUMN],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": INDEX_COLUMN, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return json.dumps(doc).encode()


def write_tasks(path: Path, tasks: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)),
                      INDEX_COLUMN: pa.array(tasks, type=pa.string())})
    table = table.replace_schema_metadata({b"pandas": _pandas_metadata(len(tasks))})
    pq.write_table(table, path)


def read_tasks(path: Path) -> list[str]:
    """Task strings by task_index (the index column may be named by pandas or be a plain 'task' column)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    names = t.column_names
    col = INDEX_COLUMN if INDEX_COLUMN in names else ("task" if "task" in names else None)
    if col is None or "task_index" not in names:
        raise ValueError(f"columns {names}: expected task_index and the task strings")
    order = np.argsort(np.asarray(t.column("task_index").to_pylist()))
    strings = t.column(col).to_pylist()
    return [strings[i] for i in order]


def write_rows(path: Path, rows: list[dict[str, Any]], like=None) -> None:
    """Episode-metadata rows as one parquet file; ``like`` (an existing schema) keeps every file's types equal."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=like) if like is not None else pa.Table.from_pylist(rows)
    pq.write_table(table, path, compression="snappy")


def read_rows(path: Path, columns=None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pylist()


def frame_table(columns: dict[str, np.ndarray], schema):
    """Frame rows for data/*.parquet from per-column arrays, with the exact types of ``schema``."""
    import pyarrow as pa

    arrays = []
    for field in schema:
        values = np.asarray(columns[field.name])
        if pa.types.is_fixed_size_list(field.type):
            flat = pa.array(values.reshape(-1), type=field.type.value_type)  # values already have the feature's dtype
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
        else:
            arrays.append(pa.array(values.reshape(-1), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
