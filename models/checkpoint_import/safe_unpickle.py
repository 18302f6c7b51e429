"""A restricted unpickler for training checkpoints that never executes code from the file.

Pickle is a small stack machine whose GLOBAL/STACK_GLOBAL opcodes can name any importable
callable, so loading an untrusted pickle normally means running arbitrary code.  We subclass the
C unpickler and answer ``find_class`` from a fixed table: plain containers, a handful of
harmless helpers, torch tensor rebuilders and *inert placeholders* for the OmegaConf / dill
classes that Diffusion Policy workspace checkpoints contain.  Nothing from omegaconf, dill or the
original project is imported; anything else is refused with a message naming the class and the
file.  After loading, `to_plain` turns the OmegaConf placeholders into plain dicts/lists/values.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools
from typing import Any, Callable

from .errors import CheckpointError, UnsafeCheckpointError

# How deep a loaded structure may nest before we call it malformed; real configs are < 20 deep.
MAX_DEPTH = 200


class _Inert:
    """Base of every placeholder: NEWOBJ may create it, BUILD stores state, nothing else runs."""

    __slots__ = ("state", "args")
    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE path (cls(*args))
        self.args = args
        self.state = None

    def __new__(cls, *args: Any, **kwargs: Any):  # NEWOBJ path (cls.__new__(cls, *args))
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname} placeholder>"


class DictConfigData(_Inert):
    qualname = "omegaconf.dictconfig.DictConfig"


class ListConfigData(_Inert):
    qualname = "omegaconf.listconfig.ListConfig"


class NodeData(_Inert):
    qualname = "omegaconf.nodes.ValueNode"


class MetadataData(_Inert):
    qualname = "omegaconf.base.Metadata"


class _AnyMarker:
    """Stands for ``typing.Any`` (OmegaConf's ref/key/element type) without touching typing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "typing.Any"


ANY = _AnyMarker()

# dill pickles builtin types by name through `_load_type`; only data types are answered.
_DILL_TYPES: dict[str, type] = {
    "dict": dict, "list": list, "int": int, "float": float, "str": str, "bool": bool,
    "tuple": tuple, "bytes": bytes, "NoneType": type(None), "set": set, "frozenset": frozenset,
    "complex": complex,
}


def _dill_load_type(name: Any) -> type:
    if not isinstance(name, str) or name not in _DILL_TYPES:
        raise UnsafeCheckpointError(f"refusing dill._dill._load_type({name!r}): not a plain data type")
    return _DILL_TYPES[name]


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Protocol 2 spells `bytes` objects as `_codecs.encode(str, 'latin1')`; allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafeCheckpointError("refusing _codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin1")


def _plain_defaultdict(*args: Any) -> dict:
    """A defaultdict's factory is irrelevant to stored data; rebuild it as a plain dict."""
    if len(args) > 1:
        raise CheckpointError("malformed collections.defaultdict in pickle")
    return {}


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))):
        raise CheckpointError("malformed collections.OrderedDict in pickle")
    return collections.OrderedDict(*args)


class Sealed:
    """An allowed callable as the pickle sees it: callable, but with no attributes to overwrite.

    BUILD on a plain function would set attributes on it (e.g. ``__defaults__``) for the rest of
    the process; a slotted wrapper whose ``__setattr__`` refuses makes that a load error instead.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointError("pickle tried to modify an allowed global")

    def __reduce__(self):  # never pickled back out
        raise TypeError("not picklable")


# Globals that need no torch: (module, name) -> object handed to the pickle machine.
BASE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): Sealed(_ordered_dict),
    ("collections", "defaultdict"): Sealed(_plain_defaultdict),
    ("dill._dill", "_load_type"): Sealed(_dill_load_type),
    ("_codecs", "encode"): Sealed(_codecs_encode),
    ("typing", "Any"): ANY,
    ("builtins", "slice"): slice,
    ("omegaconf.dictconfig", "DictConfig"): DictConfigData,
    ("omegaconf.listconfig", "ListConfig"): ListConfigData,
    ("omegaconf.base", "ContainerMetadata"): MetadataData,
    ("omegaconf.base", "Metadata"): MetadataData,
}
# Builtin data types (plain pickles name them directly, e.g. as OmegaConf's object_type).
for _tname, _t in _DILL_TYPES.items():
    if _tname != "NoneType":
        BASE_GLOBALS[("builtins", _tname)] = _t
# Every OmegaConf leaf node is only a typed value holder.
for _node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode"):
    BASE_GLOBALS[("omegaconf.nodes", _node)] = type(_node + "Data", (NodeData,), {"qualname": f"omegaconf.nodes.{_node}"})


class RestrictedUnpickler(pickle.Unpickler):
    """C unpickler whose globals come only from `allowed`; storages come from `persistent_load`."""

    def __init__(self, data: bytes, source: str, allowed: dict[tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._source = source
        self._allowed = allowed
        self._pload = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        # Protocol <3 pickles spell Python 3 modules with Python 2 names (__builtin__, copy_reg).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name} from {self._source}: only plain containers, numbers, "
                "strings, tensors and OmegaConf configs are allowed (this global could run code)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._pload is None:
            raise CheckpointError(f"{self._source}: unexpected persistent id in pickle")
        return self._pload(pid)


def restricted_loads(data: bytes, source: str, allowed: dict[tuple[str, str], Any] | None = None,
                     persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickle `data` with the allow-list and convert placeholders to plain data.

    Every failure mode (truncation, garbage opcodes, refused globals, bad arguments, absurd
    nesting) ends as a CheckpointError naming `source`.
    """
    table = BASE_GLOBALS if allowed is None else allowed
    try:
        prescan(data)
        obj = RestrictedUnpickler(data, source, table, persistent_load).load()
        return to_plain(obj)
    except CheckpointError as err:
        if source in str(err):
            raise
        raise type(err)(f"{source}: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{source}: pickle nests too deeply (damaged file?)") from None
    except MemoryError:
        raise CheckpointError(f"{source}: pickle asks for more memory than available (damaged file?)") from None
    except Exception as err:  # noqa: BLE001 - any parser failure is a damaged file
        raise CheckpointError(f"{source}: damaged or not a checkpoint pickle ({type(err).__name__}: {err})") from None


_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def prescan(data: bytes) -> None:
    """Walk the opcodes once (pure Python, linear) and refuse what would make the C unpickler
    allocate without bound: a memo index far beyond anything a real pickle writes (the C memo
    table is resized to twice the index, so one flipped byte could ask for tens of gigabytes)."""
    count = 0
    for op, arg, _pos in pickletools.genops(data):
        count += 1
        if op.name in _PUT_OPS and isinstance(arg, int) and arg > 2 * count + 1024:
            raise CheckpointError(f"memo index {arg} at opcode {count} is implausible (damaged file?)")


def to_plain(obj: Any) -> Any:
    """Replace OmegaConf placeholders by dicts/lists/values, keeping shared objects shared."""
    memo: dict[int, Any] = {}
    return _plain(obj, memo, 0)


def _plain(obj: Any, memo: dict[int, Any], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CheckpointError(f"structure nests deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, complex, _AnyMarker, type)):
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, NodeData):
        val = _state_field(obj, "_val")
        memo[key] = None
        out = _plain(val, memo, depth + 1)
        memo[key] = out
        return out
    if isinstance(obj, DictConfigData):
        content = _state_field(obj, "_content")
        if content is None or isinstance(content, str):  # None-valued or "???" (missing) config
            memo[key] = content
            return content
        if not isinstance(content, dict):
            raise CheckpointError("malformed DictConfig content")
        out_d: dict = {}
        memo[key] = out_d
        for k, v in content.items():
            out_d[_plain(k, memo, depth + 1)] = _plain(v, memo, depth + 1)
        return out_d
    if isinstance(obj, ListConfigData):
        content = _state_field(obj, "_content")
        if content is None or isinstance(content, str):
            memo[key] = content
            return content
        if not isinstance(content, (list, tuple)):
            raise CheckpointError("malformed ListConfig content")
        out_l: list = []
        memo[key] = out_l
        out_l.extend(_plain(v, memo, depth + 1) for v in content)
        return out_l
    if isinstance(obj, MetadataData):
        memo[key] = None
        return None
    if isinstance(obj, dict):
        # Keep the concrete dict type (OrderedDict stays ordered); rebuild to drop placeholders.
        out_m = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        memo[key] = out_m
        for k, v in list(obj.items()):
            out_m[_plain(k, memo, depth + 1)] = _plain(v, memo, depth + 1)
        return out_m
    if isinstance(obj, list):
        out_ls: list = []
        memo[key] = out_ls
        out_ls.extend(_plain(v, memo, depth + 1) for v in obj)
        return out_ls
    if isinstance(obj, tuple):
        memo[key] = None
        out_t = tuple(_plain(v, memo, depth + 1) for v in obj)
        memo[key] = out_t
        return out_t
    if isinstance(obj, (set, frozenset)):
        out_s = type(obj)(_plain(v, memo, depth + 1) for v in obj)
        memo[key] = out_s
        return out_s
    if isinstance(obj, _Inert):
        raise CheckpointError(f"unexpected {obj.qualname} object")
    # Tensors and other leaves produced by allowed rebuilders pass through unchanged.
    memo[key] = obj
    return obj


def _state_field(obj: _Inert, name: str) -> Any:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = state[0] or state[1]  # (dict state, slot state) form
    if not isinstance(state, dict):
        raise CheckpointError(f"malformed {obj.qualname}: state is {type(state).__name__}")
    return state.get(name)
