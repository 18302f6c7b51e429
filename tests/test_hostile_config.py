"""Run configs as a careless or hostile user writes them: what they mean is accepted, bombs are refused.

Each refusal is one line `field.path: problem` and exit 2 from `edgedp check` and `edgedp run`,
in a subprocess whose address space is capped (RLIMIT_AS, tests/hostile_cli.py) and with a
generous timeout, so a hang or an unbounded allocation fails the test instead of the machine.
"""
from __future__ import annotations

import copy
import math
import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from edgedp.config import ConfigError, RunConfig, load_config, parse_config
from tests.test_config import GOOD

from tests.hostile_cli import cli as _cli, cli_many as _cli_many


def _refused_one_line(res: subprocess.CompletedProcess, command: str, field: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-2000:]
    prefix = f"edgedp {command}: {field}"
    assert lines[0].startswith(prefix), (lines[0], prefix)
    return lines[0]


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _good_yaml() -> str:
    return yaml.safe_dump(GOOD, sort_keys=False)


# ---- what users mean ------------------------------------------------------------------------------
def test_on_off_yes_no_are_words_where_a_field_wants_words_and_booleans_where_it_wants_booleans(tmp_path):
    for word in ("off", "on", "auto"):
        text = _good_yaml().replace("baud: 1000000", f"baud: 1000000\n    fast_sync_read: {word}\n    low_latency: off")
        cfg = load_config(_write(tmp_path, text))
        assert cfg.robot.bus.fast_sync_read == word
        assert cfg.robot.bus.low_latency is False
    text = _good_yaml().replace("name: arm", "name: no") + "telemetry:\n  live: no\n  plot: yes\n"
    cfg = load_config(_write(tmp_path, text))
    assert cfg.robot.name == "no"  # a string field keeps the word
    assert cfg.telemetry.live is False and cfg.telemetry.plot is True
    text = _good_yaml().replace("baud: 1000000", "baud: 1000000\n    fast_sync_read: true")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.problems[0].startswith("robot.bus.fast_sync_read: got True (allowed: 'auto', 'on' or 'off')")


def test_every_enum_field_with_yaml11_boolean_words_takes_them_literally():
    """Find every Literal field of the config whose allowed values include a YAML 1.1 boolean word."""
    words = {"on", "off", "yes", "no", "y", "n"}
    found = []
    for path, ann in _fields(RunConfig, ()):
        if typing.get_origin(ann) is typing.Literal:
            hit = words & {str(a).lower() for a in typing.get_args(ann)}
            if hit:
                found.append((path, sorted(hit)))
    assert found, "expected at least robot.bus.fast_sync_read"
    for path, hits in found:
        for word in hits:
            text = yaml.safe_dump(_set(copy.deepcopy(GOOD), path, "@@")).replace("'@@'", word)
            data = __import__("models.safe_yaml", fromlist=["load_yaml"]).load_yaml(text)
            cfg = parse_config(data, base=Path.cwd())
            node = cfg
            for part in path:
                node = node[part] if isinstance(part, int) else getattr(node, part)
            assert node == word, (path, word, node)


# ---- duplicates ----------------------------------------------------------------------------------
def _duplicate_text() -> str:
    return _good_yaml().replace("port: emulator", "port: emulator\n    port: /dev/ttyUSB0")


def test_duplicate_key_names_the_path_and_both_lines(tmp_path):
    text = _duplicate_text()
    p = _write(tmp_path, text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "/dev/ttyUSB0" in s)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems == [f"robot.bus.port: duplicate key at line {line} (first at line {line - 1}; "
                                   "each key once)"]


# ---- anchors and aliases -------------------------------------------------------------------------
def _laughs(levels: int = 9, width: int = 9) -> str:
    """A ~700-byte 'billion laughs': width**levels copies of a string once aliases are expanded."""
    rows = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        rows.append(f"&a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "[" + ", ".join(rows) + "]"


def _anchor_text(key: str) -> str:
    bomb = _laughs()
    assert len(bomb) < 800
    text = _good_yaml().replace("robot:\n", f"robot:\n  {key}: {bomb}\n", 1)
    return text.replace("  name: arm\n", "", 1 if key == "name" else 0)


@pytest.mark.parametrize("field", ["robot.name", "robot.dh"])
def test_anchor_bomb_is_refused_at_the_first_alias(tmp_path, field):
    p = _write(tmp_path, _anchor_text(field.split(".")[1]))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems[0].startswith(f"{field}[1][0]: YAML alias *a0 at line")


# ---- non-finite numbers, every numeric field -----------------------------------------------------
def _fields(model: type[BaseModel], prefix: tuple) -> typing.Iterator[tuple[tuple, typing.Any]]:
    """(path, annotation) of every leaf field; list-of-model fields are entered at index 0."""
    for name, info in model.model_fields.items():
        ann = info.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_origin(ann) is typing.Union else []
        inner = args[0] if len(args) == 1 else ann
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _fields(inner, prefix + (name,))
        elif typing.get_origin(inner) is list and isinstance(typing.get_args(inner)[0], type) \
                and issubclass(typing.get_args(inner)[0], BaseModel):
            yield from _fields(typing.get_args(inner)[0], prefix + (name, 0))
        else:
            yield prefix + (name,), inner


def _numeric_paths() -> list[tuple]:
    out = []
    for path, ann in _fields(RunConfig, ()):
        if ann in (int, float):
            out.append(path)
        elif typing.get_origin(ann) is list:  # robot.dh (rows of floats), scene.link_lengths
            out.append(path + (0,) if typing.get_args(ann)[0] is float else path + (0, 0))
    return out


def _set(data: dict, path: tuple, value) -> dict:
    node = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, dict) and part not in node:
            node[part] = [] if isinstance(path[i + 1], int) else {}
        if isinstance(node, list) and len(node) <= part:
            node.append([] if isinstance(path[i + 1], int) else {})
        node = node[part]
    if isinstance(node, list) and len(node) <= path[-1]:
        node.append(value)
    else:
        node[path[-1]] = value
    return data


def _base_with_sections() -> dict:
    data = copy.deepcopy(GOOD)
    data["scene"] = {"task": "reach"}
    data["cameras"][0]["exposure"] = 100.0
    return data


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


NUMERIC = _numeric_paths()


def test_numeric_field_list_covers_the_config():
    names = {_dotted(p) for p in NUMERIC}
    for expected in ("robot.joints[0].max_velocity", "robot.dh[0][0]", "rates.servo_hz", "policy.action_period",
                     "safety.start_ramp_time", "scene.link_lengths[0]", "duration", "cameras[0].exposure"):
        assert expected in names, sorted(names)


@pytest.mark.parametrize("path", NUMERIC, ids=[_dotted(p) for p in NUMERIC])
def test_non_finite_number_is_refused_by_field_name(tmp_path, path):
    field = _dotted(path)
    for spelled in (".inf", "-.inf", ".nan", ".NaN"):
        text = yaml.safe_dump(_set(_base_with_sections(), path, "@@"), sort_keys=False).replace("'@@'", spelled)
        with pytest.raises(ConfigError) as info:
            load_config(_write(tmp_path, text))
        assert info.value.problems == [f"{field}: {spelled} is not a finite number (a finite number)"], spelled
    for value in (math.inf, -math.inf, math.nan, "NaN", "inf"):  # already-parsed data (and strings) too
        with pytest.raises(ConfigError) as info:
            parse_config(_set(_base_with_sections(), path, value), base=Path.cwd())
        line = next((p for p in info.value.problems if p.startswith(field + ":")), None)
        assert line is not None, (value, info.value.problems)
        assert "finite" in line or "integer" in line, line


# ---- hostile and unreadable files, one line each from check and run -------------------------------------------
def _hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    d = tmp_path / "adir.yaml"
    d.mkdir()
    bad_utf8 = tmp_path / "latin1.yaml"
    bad_utf8.write_bytes(_good_yaml().replace("name: arm", "name: bra\xe7o").encode("latin-1"))
    empty = _write(tmp_path, "", "empty.yaml")
    comments = _write(tmp_path, "# nothing here\n\n", "comments.yaml")
    top_list = _write(tmp_path, "- robot\n- policy\n", "list.yaml")
    deep = _write(tmp_path, "robot:\n  name: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    digits = _write(tmp_path, _good_yaml().replace("id: 1\n", "id: " + "9" * 5000 + "\n", 1), "digits.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_text(_good_yaml() + "#" * (1 << 20))
    return {
        "anchor bomb in robot.name": (_write(tmp_path, _anchor_text("name"), "bomb_name.yaml"),
                                      "robot.name[1][0]: YAML alias *a0"),
        "anchor bomb in robot.dh": (_write(tmp_path, _anchor_text("dh"), "bomb_dh.yaml"), "robot.dh[1][0]: YAML alias *a0"),
        "duplicate key": (_write(tmp_path, _duplicate_text(), "dup.yaml"), "robot.bus.port: duplicate key at line"),
        "directory": (d, "config: "),
        "non-utf8": (bad_utf8, "config: "),
        "empty": (empty, "config: "),
        "only comments": (comments, "config: "),
        "top-level list": (top_list, "(top level): expected a mapping"),
        "deep nesting": (deep, "robot.name[0][0]"),
        "5000-digit integer": (digits, "robot.joints[0].id: integer with 5000 digits"),
        "oversized file": (huge, "config: "),
    }


def test_hostile_files_are_one_line_from_load_config(tmp_path):
    for what, (path, start) in _hostile_files(tmp_path).items():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert len(info.value.problems) == 1, (what, info.value.problems)
        line = info.value.problems[0]
        assert line.startswith(start) and "\n" not in line, (what, line)
        if start == "config: ":
            assert str(path) in line, (what, line)


def test_hostile_files_exit_2_with_one_line_from_check_and_run(tmp_path):
    files = _hostile_files(tmp_path)
    calls = [[command, str(path)] for path, _ in files.values() for command in ("check", "run")]
    results = iter(_cli_many(calls))
    for what, (path, start) in files.items():
        for command in ("check", "run"):
            res = next(results)
            assert "Traceback" not in res.stderr, (what, command, res.stderr[-1500:])
            _refused_one_line(res, command, start)
    # and once as a real process, for the exit status itself
    _refused_one_line(_cli("run", str(files["anchor bomb in robot.name"][0])), "run", "robot.name[1][0]: YAML alias")
