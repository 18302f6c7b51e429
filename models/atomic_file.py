"""Atomic file and folder writes for models/ (which may import only torch and numpy, not firmware_bridge).

This is firmware_bridge/atomic_file.py's recipe, the same code below its docstring (tests/test_atomic_file.py
compares the two and runs the same behaviour tests on both): temporary file in the destination's folder,
fsync, rename, fsync the folder; for folders, fill a temporary one, fsync, swap.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask would, for a moment,
    for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def default_mode() -> int:
    """The mode a plain open() gives a new file under the current umask."""
    return 0o666 & ~_umask()


def fsync_file(path: PathLike) -> None:
    """Flush a file's data to the device (for files written by a library that closes them itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Make renames and creations inside folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_file(tmp: PathLike, path: PathLike) -> None:
    """Make the finished file `tmp` (in `path`'s folder) the file `path`: fsync it, rename it over `path`,
    fsync the folder. For files another library wrote to a name of its choosing (a RealSense recording)."""
    fsync_file(tmp)
    os.replace(tmp, path)
    folder = Path(path).parent
    fsync_dir(folder if str(folder) else Path("."))


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write by name (np.savez, savefig, onnx.save...); on a clean exit it is
    fsynced and renamed over `path`, and the folder fsynced. `suffix` keeps libraries that add or check an
    extension happy (np.savez appends .npz unless the name already ends with it)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=str(folder))
    os.close(fd)
    try:
        os.chmod(tmp, default_mode())
        yield Path(tmp)
        replace_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: PathLike, write: Callable, binary: bool = True, encoding: str = "utf-8") -> None:
    """Call write(fileobj) on a temporary file beside `path`, then fsync, rename over `path` and fsync the folder."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": encoding})) as fh:
            write(fh)
            fh.flush()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write(path, lambda fh: fh.write(text), binary=False, encoding=encoding)


def replace_dir(tmp: PathLike, path: PathLike) -> None:
    """Make the filled folder `tmp` (beside `path`) the folder `path`: every file and folder in it fsynced, an
    existing `path` moved aside and removed after the swap, the parent fsynced. A failure before the swap
    leaves `path` as it was."""
    import shutil

    tmp, path = Path(tmp), Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)
    old = None
    if path.exists():
        old = parent / f".{path.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; on a clean exit it replaces `path` (replace_dir). A reader sees
    the old folder or the new one; a failure leaves the old one in place and removes the temporary one."""
    import shutil

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(parent)))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # what a plain mkdir would give
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
