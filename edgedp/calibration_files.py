"""The calibration files a run reads: robot.time_offset_file and robot.calibration_file.

Both are YAML written by `edgedp calibrate`; each is read with a size limit and checked value by value, so a
bad file is one line naming the field, not a wrong zero on a real arm. edgedp/app.py applies them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgedp.config import JointConfig, RunConfig
from edgedp.errors import UserError

SOURCE_CONFIG = "config"
SOURCE_FILE = "calibration file"
SOURCE_DEFAULT = "default"


# ----------------------------------------------------------------------------------------- time offsets
MAX_DELAY_S = 1.0  # a measured stream delay beyond a second is a wrong file or a failed calibration


def read_small_yaml(path: Path, where: str, what: str) -> Any:
    """A YAML file one of our calibrate commands wrote, through the project's hardened reader (no aliases, no
    duplicate keys, no non-finite numbers, bounded size and depth): one line when it cannot be read."""
    from models.safe_yaml import YamlInputError, read_yaml_file

    try:
        return read_yaml_file(path, max_bytes=1_000_000)
    except YamlInputError as exc:
        first = (str(exc).splitlines() or ["unreadable"])[0]
        raise UserError(f"{where}: cannot read it as a {what} file ({first})") from None


def load_time_offsets(path) -> tuple[float, float]:
    """(camera_delay_s, command_delay_s) from the YAML `edgedp calibrate time-offset` writes.

    A missing command delay (the file came from a recording without commands) counts as 0; the camera
    delay is required, since it is the one thing such a file is for."""
    where = f"robot.time_offset_file: {path}"
    if not Path(path).is_file():
        raise UserError(f"{where}: file not found (write one with edgedp calibrate time-offset)")
    data = read_small_yaml(Path(path), where, "time-offset")
    if not isinstance(data, dict) or "camera_delay_s" not in data:
        raise UserError(f"{where}: not a time-offset file (no camera_delay_s key; write one with "
                        f"edgedp calibrate time-offset)")
    out = []
    for key in ("camera_delay_s", "command_delay_s"):
        v = data.get(key)
        if v is None and key == "command_delay_s":
            v = 0.0
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {key} must be a number of seconds, got {v!r}")
        if abs(v) > MAX_DELAY_S:
            raise UserError(f"{where}: {key} = {v:g} s is implausible (|delay| must be at most {MAX_DELAY_S:g} s)")
        out.append(float(v))
    return out[0], out[1]


# ------------------------------------------------------------------------------------ joint calibration
def load_joint_calibration(path) -> dict[str, dict]:
    """{joint name: {"id", "zero_offset", "direction"}} from the YAML `edgedp calibrate joints` writes.

    The file's format is calibration.joints' (q = direction * (servo - zero_offset)); this reads it with the
    same limits as every other file a run reads and checks each value, so a bad file is one line, not a
    wrong zero on a real arm."""
    where = f"robot.calibration_file: {path}"
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: file not found (write one with edgedp calibrate joints)")
    data = read_small_yaml(path, where, "joint calibration")
    rows = data.get("joints") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{where}: not a joint calibration file (no joints list; write one with edgedp calibrate joints)")
    out: dict[str, dict] = {}
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or not {"name", "id", "zero_offset", "direction"} <= set(row):
            raise UserError(f"{where}: joints[{k}] needs name, id, zero_offset and direction")
        name, sid, zero, d = row["name"], row["id"], row["zero_offset"], row["direction"]
        if not isinstance(name, str) or isinstance(sid, bool) or not isinstance(sid, int):
            raise UserError(f"{where}: joints[{k}]: name must be text and id a number")
        if isinstance(zero, bool) or not isinstance(zero, (int, float)) or not math.isfinite(zero) \
                or abs(zero) > 4 * math.pi:
            raise UserError(f"{where}: joints[{k}].zero_offset must be a finite angle in radians, got {zero!r}")
        if isinstance(d, bool) or d not in (1, -1):
            raise UserError(f"{where}: joints[{k}].direction must be 1 or -1, got {d!r}")
        if name in out:
            raise UserError(f"{where}: joint '{name}' appears twice")
        out[name] = {"id": sid, "zero_offset": float(zero), "direction": int(d)}
    return out


def apply_joint_calibration(cfg: RunConfig, missing_ok: bool = False
                            ) -> tuple[list[JointConfig], list[dict[str, str]], list[str]]:
    """The joints a run uses, with where each zero and direction came from.

    Precedence, per joint and per value: robot.calibration_file (measured) > the value written in
    robot.joints > the default (zero 0, direction +1). A joint the file does not list keeps its config
    value; a file naming a joint the config lacks, or the same joint with another servo id, is refused
    (it belongs to another robot). A config value the file overrides is reported in the notes.
    `missing_ok`: a file that does not exist yet counts as empty (`edgedp calibrate joints` writing it)."""
    joints = list(cfg.robot.joints)
    path = cfg.robot.calibration_file
    if path is not None and missing_ok and not Path(path).exists():
        path = None
    cal = load_joint_calibration(path) if path is not None else {}
    by_name = {j.name: j for j in joints}
    for name, row in cal.items():
        if name not in by_name:
            raise UserError(f"robot.calibration_file: {path}: joint '{name}' is not in robot.joints "
                            f"(allowed: {', '.join(by_name)}; is it another robot's file?)")
        if row["id"] != by_name[name].id:
            raise UserError(f"robot.calibration_file: {path}: joint '{name}' has servo id {row['id']} in the file "
                            f"but {by_name[name].id} in robot.joints")
    out: list[JointConfig] = []
    sources: list[dict[str, str]] = []
    notes: list[str] = []
    for i, j in enumerate(joints):
        row = cal.get(j.name)
        src: dict[str, str] = {}
        update: dict[str, Any] = {}
        for key in ("zero_offset", "direction"):
            written = key in j.model_fields_set
            if row is not None:
                src[key] = SOURCE_FILE
                update[key] = row[key]
                if written and getattr(j, key) != row[key]:
                    notes.append(f"robot.joints[{i}].{key} = {getattr(j, key):g} is overridden by the calibration "
                                 f"file ({row[key]:g})")
            else:
                src[key] = SOURCE_CONFIG if written else SOURCE_DEFAULT
        out.append(j.model_copy(update=update) if update else j)
        sources.append(src)
    return out, sources, notes
