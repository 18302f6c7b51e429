"""One atomic-write recipe (firmware_bridge/atomic_file.py, and its copy for models/): the destination holds the
old content or the new, never a part; no temporary file is left; modes are what a plain open() would give."""
from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import firmware_bridge.atomic_file as fb_atomic
import models.atomic_file as models_atomic

MODULES = [fb_atomic, models_atomic]


def _body(module) -> str:
    tree = ast.parse(Path(module.__file__).read_text())
    tree.body = tree.body[1:]  # the module docstring says where the copy lives; the code must be the same
    return ast.dump(tree)


def test_models_copy_is_the_same_code():
    assert _body(models_atomic) == _body(fb_atomic)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mod", MODULES, ids=["firmware_bridge", "models"])
def test_write_replaces_whole_and_leaves_nothing(tmp_path, mod):
    target = tmp_path / "result.json"
    mod.atomic_write_text(target, "old")
    mod.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == mod.default_mode()  # not mkstemp's 0600

    def half_then_fail(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        mod.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mod", MODULES, ids=["firmware_bridge", "models"])
def test_atomic_path_for_writers_that_take_a_name(tmp_path, mod):
    target = tmp_path / "streams.npz"
    with mod.atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        np.savez(tmp, a=np.arange(3))
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    with pytest.raises(KeyError):
        with mod.atomic_path(target, suffix=".npz") as tmp:
            np.savez(tmp, a=np.arange(5))
            raise KeyError("interrupted")
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mod", MODULES, ids=["firmware_bridge", "models"])
def test_atomic_dir_swaps_whole_folders(tmp_path, mod):
    target = tmp_path / "ckpt"
    with mod.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(ValueError):
        with mod.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise ValueError("failed half way")
    assert (target / "a.txt").read_text() == "one"
    with mod.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _leftovers(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()  # what a plain mkdir gives


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u
