"""Crash safety for a dataset whose files hold many episodes: stage, commit by journal, apply, recover.

A v3.0 episode touches several files at once (a data parquet, one mp4 per camera, the episodes-metadata
parquet, tasks, stats, info), and a file that already holds earlier episodes must be replaced, not
appended to (a parquet footer or an mp4 index is written at close: a crash mid-append would lose every
episode in the file). So an episode is written as:

1. stage: every new file version is written beside its target under a name ending ``.edgedp-tmp`` (which
   LeRobot's globs ``*/*.parquet`` and ``*.mp4`` never match) and fsynced;
2. commit: ``meta/.edgedp-journal.json`` (written atomically) lists the renames: from this instant the
   episode exists;
3. apply: the renames (``os.replace``, atomic each), folder fsyncs, then the journal is removed.

A crash before 2 leaves staged files only: :func:`recover` deletes them and the dataset is as it was. A
crash during 3 leaves a journal: :func:`recover` finishes the renames (they are idempotent). Earlier
episodes are never at risk: their bytes are only ever replaced by a complete, synced copy that contains them.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from firmware_bridge.atomic_file import atomic_write_text, fsync_dir, fsync_file

JOURNAL = "meta/.edgedp-journal.json"
TMP_SUFFIX = ".edgedp-tmp"


def staged_path(target: Path) -> Path:
    """A fresh staging name beside ``target`` (same folder: the rename stays within one file system)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def commit(root: Path, renames: list[tuple[Path, Path]]) -> None:
    """Make the staged files the dataset's files: journal first (the commit point), then the renames."""
    doc = {"renames": [[str(s.relative_to(root)), str(t.relative_to(root))] for s, t in renames]}
    try:
        for staged, _ in renames:
            fsync_file(staged)
        atomic_write_text(root / JOURNAL, json.dumps(doc) + "\n")
    except BaseException:  # not committed: the staged files go, the dataset stays as it was
        discard(renames)
        raise
    _apply(root, doc["renames"])  # committed: whatever happens now, recover() finishes these renames


def discard(renames: list[tuple[Path, Path]]) -> None:
    for staged, _ in renames:
        staged.unlink(missing_ok=True)


def _apply(root: Path, renames: list[list[str]]) -> None:
    folders = set()
    for staged, target in renames:
        s, t = root / staged, root / target
        if s.exists():
            os.replace(s, t)
        folders.add(t.parent)
    for folder in folders:
        fsync_dir(folder)
    (root / JOURNAL).unlink(missing_ok=True)
    fsync_dir(root / "meta")


def recover(root: Path) -> dict[str, int]:
    """Finish a committed episode whose renames were interrupted; delete what an uncommitted one staged."""
    journal = root / JOURNAL
    finished = 0
    if journal.exists():
        try:
            renames = json.loads(journal.read_text())["renames"]
        except (ValueError, KeyError, TypeError):
            renames = None  # a journal is written atomically: an unreadable one was never the commit point
        if renames is not None:
            _apply(root, renames)
            finished = 1
        else:
            journal.unlink()
    removed = 0
    for path in list(root.rglob(f"*{TMP_SUFFIX}")) + list((root / "meta").glob(".*.tmp-*")):
        path.unlink(missing_ok=True)
        removed += 1
    return {"finished": finished, "removed": removed}


def pending(root: Path) -> bool:
    """True when an interrupted write left something for :func:`recover` (readers say so instead of guessing)."""
    return (root / JOURNAL).exists() or any(root.rglob(f"*{TMP_SUFFIX}"))
