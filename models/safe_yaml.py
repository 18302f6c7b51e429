"""YAML for files a person writes (run configs, native policy.yaml): what they mean, nothing that can blow up.

PyYAML's `safe_load` is safe from code execution but not from surprises or resource bombs:
  * YAML 1.1 reads `on`/`off`/`yes`/`no` as booleans, so `fast_sync_read: off` arrives as False and
    `name: no` as a bool. Here only `true`/`false` are booleans (YAML 1.2 core schema); every other
    word stays a string, and a typed validator (pydantic) still turns 'on'/'off' into a bool where
    a field wants one.
  * a key written twice silently keeps the last value; here it is an error naming both lines.
  * anchors and aliases let 700 bytes expand to gigabytes (a "billion laughs"); aliases are refused.
  * `.inf` / `.nan` pass `gt=0` checks; integers of thousands of digits overflow later. Both are
    refused here with the key path, before any validator sees them.
  * nesting is capped (PyYAML's composer recurses), and so is the file size.
Every problem is `(key.path, what is wrong)`; callers turn that into their own one-line errors.

This lives in `models/` because native checkpoints need it and `models/` never imports `edgedp`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

MAX_DEPTH = 64  # real configs nest < 8 levels
MAX_INT_DIGITS = 19  # 64-bit integers; anything longer is a typo or an attack
DEFAULT_MAX_BYTES = 256 * 1024  # a run config is a few KiB

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class YamlInputError(ValueError):
    """The YAML text is refused; `problems` holds (key path or '', message) pairs, one per mistake."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.problems))


def format_path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2-style scalars, no aliases and a nesting limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[Any] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        part = index.value if isinstance(index, ScalarNode) else index  # key node, list index or None
        self._path.append(part)
        try:
            where = format_path([p for p in self._path if p is not None])
            if self.check_event(yaml.AliasEvent):
                ev = self.peek_event()
                raise YamlInputError([(where, f"YAML alias *{ev.anchor} at line {ev.start_mark.line + 1} is refused "
                                              "(write the value out; aliases can expand without bound)")])
            if len(self._path) > MAX_DEPTH:
                ev = self.peek_event()
                where = where if len(where) <= 60 else where[:57] + "..."
                raise YamlInputError([(where, f"nested more than {MAX_DEPTH} levels deep at line "
                                              f"{ev.start_mark.line + 1} (a config is a few levels deep)")])
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


def _construct_int(loader: yaml.SafeLoader, node: ScalarNode) -> int:
    text = node.value.replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text[:2] in ("0x", "0X"):
        return sign * int(text[2:], 16)
    if text[:2] in ("0o", "0O"):
        return sign * int(text[2:], 8)
    return sign * int(text, 10)  # leading zeros are decimal (YAML 1.2), not octal


def _construct_float(loader: yaml.SafeLoader, node: ScalarNode) -> float:
    text = node.value.replace("_", "").lower()
    if text.lstrip("+-") == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


# Implicit scalar types of the YAML 1.2 core schema (booleans are true/false only; no timestamps,
# no sexagesimal numbers, no leading-zero octal, no merge keys).
_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Loader.add_constructor(_INT, _construct_int)
_Loader.add_constructor(_FLOAT, _construct_float)


def _check_tree(node: Any, path: list[Any], problems: list[tuple[str, str]]) -> None:
    """Duplicate keys, non-scalar keys, oversized integers and non-finite numbers, by key path."""
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                problems.append((format_path(path), f"a list or mapping used as a key at line {key.start_mark.line + 1}"
                                                    " (keys are plain names)"))
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                problems.append((format_path(path + [key.value]),
                                 f"duplicate key at line {line} (first at line {first[key.value]}; each key once)"))
            else:
                first[key.value] = line
            _check_tree(value, path + [key.value], problems)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_tree(item, path + [i], problems)
    elif isinstance(node, ScalarNode):
        where = format_path(path)
        if node.tag == _INT:
            digits = len(node.value.replace("_", "").lstrip("+-"))
            if digits > MAX_INT_DIGITS:
                problems.append((where, f"integer with {digits} digits at line {node.start_mark.line + 1} is out of "
                                        "range (a 64-bit integer)"))
            else:
                try:
                    _construct_int(None, node)  # type: ignore[arg-type]
                except ValueError:
                    problems.append((where, f"{node.value[:40]!r} is not an integer"))
        elif node.tag == _FLOAT:
            try:
                value = _construct_float(None, node)  # type: ignore[arg-type]
            except ValueError:
                problems.append((where, f"{node.value[:40]!r} is not a number"))
            else:
                if not math.isfinite(value):
                    problems.append((where, f"{node.value} is not a finite number (a finite number)"))


def load_yaml(text: str) -> Any:
    """Parse one YAML document with the rules above; raise YamlInputError or yaml.YAMLError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems: list[tuple[str, str]] = []
        _check_tree(node, [], problems)
        if problems:
            raise YamlInputError(problems)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Read and parse a YAML file; every way it can be unreadable is a one-line YamlInputError."""
    p = Path(path)
    if p.is_dir():
        raise YamlInputError([("", f"{p} is a directory (expected a YAML file)")])
    if not p.exists():
        raise YamlInputError([("", f"file not found: {p}")])
    try:
        with open(p, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as err:
        raise YamlInputError([("", f"cannot read {p} ({err.strerror or err})")]) from None
    if len(raw) > max_bytes:
        raise YamlInputError([("", f"{p} is larger than {max_bytes // 1024} KiB (not a config file?)")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlInputError([("", f"{p} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})")]) from None
    text = text.removeprefix("\ufeff")
    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise YamlInputError([("", f"{p} is empty")])
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise YamlInputError([("", f"{p} is not valid YAML{where}: {problem}")]) from None
    except YamlInputError:
        raise
    except RecursionError:
        raise YamlInputError([("", f"{p} nests too deeply")]) from None
    except (ValueError, TypeError, OverflowError) as exc:  # an explicit tag (!!timestamp, !!binary) with bad text
        raise YamlInputError([("", f"{p} is not valid YAML ({type(exc).__name__}: {str(exc)[:80]})")]) from None
