"""LeRobot v3.0 datasets: a crash-safe writer, a reader, and conversion from edgedp's older ``.npz`` sets.

The on-disk format is LeRobot's own (codebase_version "v3.0"), so `LeRobotDataset(repo_id, root=DIR)`
opens what edgedp writes with no conversion, and edgedp trains on datasets LeRobot wrote. The facts of
the format come from LeRobot 0.4.4's source (src/lerobot/datasets/{lerobot_dataset,utils,compute_stats,
video_utils}.py); each module says which function it follows. docs/datasets.md is the long form.

pyarrow and PyAV are needed (the ``datasets`` extra); :func:`require` turns their absence into one line.
"""
from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset folder that is missing, foreign or inconsistent, or a write that cannot be done; one line."""


def require() -> None:
    """Raise DatasetError with the install line when pyarrow or PyAV is missing."""
    missing = []
    for module, package in (("pyarrow", "pyarrow"), ("av", "av")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise DatasetError(f"LeRobot datasets need {' and '.join(missing)}: pip install 'edgedp[datasets]' "
                           f"(or pip install {' '.join(missing)})")


def check_creatable(root: Path, option: str) -> None:
    """Raise DatasetError naming `option` when the folder `root` cannot be made. Recordings are written while
    or after the robot (or the sim) runs: a folder that cannot exist must be refused before that, not after.
    Missing folders are made and removed again, so nothing is left behind."""
    root = Path(root)
    made = [p for p in [root, *root.parents] if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{option} {root}: cannot create it ({exc.strerror or exc})") from None
    for p in made:  # deepest first
        p.rmdir()
