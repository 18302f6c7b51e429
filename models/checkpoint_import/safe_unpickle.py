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

from .errors import CheckpointError, UnsafeCheckpointError, short_repr

# How deep a loaded structure may nest before we call it malformed; real configs are < 20 deep.
MAX_DEPTH = 200
# How many items a loaded structure may have once shared references are counted along every path
# (what a repr, a comparison or a hash of it costs). A real workspace checkpoint has a few thousand;
# 'billion laughs' pickles (a list holding the same list twice, 40 levels deep) have 2**40.
MAX_EXPANDED = 1_000_000
# Items one allowed constructor call (set, frozenset, OrderedDict) may receive.
MAX_CALL_ITEMS = 1_000_000


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


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _construct(t: type, args: tuple, kwargs: dict) -> Any:
    """Build a builtin data type only in the forms the standard pickler writes (protocol 2):
    set/frozenset from one list, an empty bytes, a complex from two numbers. Anything else
    (bytes(10**9), str(huge shared list), tuple(...)) is refused before it allocates or walks."""
    name = t.__name__
    if kwargs:
        raise UnsafeCheckpointError(f"refusing builtins.{name} called with keyword arguments")
    if t in (set, frozenset) and (not args or (len(args) == 1 and isinstance(args[0], (list, tuple, set, frozenset))
                                               and len(args[0]) <= MAX_CALL_ITEMS)):
        return t(*args)
    if t is bytes and not args:
        return b""
    if t is complex and len(args) == 2 and all(_is_number(a) for a in args):
        return complex(*args)
    shown = ", ".join(type(a).__name__ for a in args[:4])
    raise UnsafeCheckpointError(f"refusing builtins.{name}({shown}) in pickle: allowed only as a type name, "
                                "set/frozenset(list), bytes() or complex(number, number)")


class DataType:
    """A builtin data type as the pickle sees it: a name to refer to (OmegaConf's object_type), and
    callable only through `_construct`. NEWOBJ needs a real type, so it cannot use this at all."""

    __slots__ = ("type",)

    def __init__(self, t: type) -> None:
        object.__setattr__(self, "type", t)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _construct(self.type, args, kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointError("pickle tried to modify an allowed type")

    def __reduce__(self):  # never pickled back out
        raise TypeError("not picklable")

    def __repr__(self) -> str:
        return f"<class '{self.type.__name__}'>"


_DATA_TYPES = {name: DataType(t) for name, t in _DILL_TYPES.items()}


def _dill_load_type(name: Any) -> DataType:
    if not isinstance(name, str) or name not in _DATA_TYPES:
        raise UnsafeCheckpointError(f"refusing dill._dill._load_type({short_repr(name)}): not a plain data type")
    return _DATA_TYPES[name]


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Protocol 2 spells `bytes` objects as `_codecs.encode(str, 'latin1')`; allow only that.
    The text comes from the pickle itself, so its size is bounded by the file."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafeCheckpointError("refusing _codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin1")


def _plain_defaultdict(*args: Any, **kwargs: Any) -> dict:
    """A defaultdict's factory is irrelevant to stored data; rebuild it as a plain dict."""
    if len(args) > 1 or kwargs:
        raise CheckpointError("malformed collections.defaultdict in pickle")
    return {}


def _ordered_dict(*args: Any, **kwargs: Any) -> collections.OrderedDict:
    if kwargs or (args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))
                                and len(args[0]) <= MAX_CALL_ITEMS)):
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
# Builtin data types (plain pickles name them directly, e.g. as OmegaConf's object_type), as DataType
# references: usable as values, constructible only in the standard pickler's forms.
for _tname, _t in _DATA_TYPES.items():
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
            raise CheckpointError(f"{self._source}: unexpected persistent id {short_repr(pid)} in pickle")
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
        plain = to_plain(obj)
        check_expansion(plain)
        return plain
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
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_TUPLE_OPS = frozenset({"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"})
_MARK = object()


def prescan(data: bytes) -> None:
    """Walk the opcodes once (pure Python, linear) and refuse what would make the C unpickler
    allocate or compute without bound, before it runs:
      * a memo index far beyond anything a real pickle writes (the C memo table is resized to twice
        the index, so one flipped byte could ask for tens of gigabytes);
      * a tuple whose items, counted along every path through shared references, exceed
        MAX_EXPANDED: hashing it as a dict key or set item (which the unpickler does) would visit
        every path, and tuples built from the same tuple twice, 60 levels deep, have 2**60.
    The second needs a shadow of the pickle stack holding each item's expanded size."""
    count = 0
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    simulate = True
    for op, arg, _pos in pickletools.genops(data):
        count += 1
        name = op.name
        if name in _PUT_OPS and isinstance(arg, int) and arg > 2 * count + 1024:
            raise CheckpointError(f"memo index {arg} at opcode {count} is implausible (damaged file?)")
        if simulate:
            try:
                _shadow_step(op, name, arg, stack, memo)
            except IndexError:  # malformed stack: the real unpickler will say so
                simulate = False


def _shadow_step(op: Any, name: str, arg: Any, stack: list[Any], memo: dict[int, Any]) -> None:
    """One opcode's effect on the shadow stack of expanded sizes (ints; _MARK for marks)."""
    if name == "MARK":
        stack.append(_MARK)
        return
    if name in _PUT_OPS:
        memo[arg] = stack[-1]
        return
    if name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
        return
    if name in _GET_OPS:
        stack.append(memo.get(arg, 1))
        return
    if name == "DUP":
        stack.append(stack[-1])
        return
    before = op.stack_before
    popped: list[Any] = []
    if pickletools.markobject in before:
        k = len(stack) - 1
        while stack[k] is not _MARK:
            k -= 1
        popped = stack[k + 1:]
        del stack[k:]
        below = before.index(pickletools.markobject)
        if below:
            if len(stack) < below:
                raise IndexError
            del stack[-below:]
    else:
        n = len(before)
        if n:
            if len(stack) < n:
                raise IndexError
            popped = stack[-n:]
            del stack[-n:]
    if any(p is _MARK for p in popped):
        raise IndexError
    size = 1
    if name in _TUPLE_OPS:
        size = 1 + sum(popped)
        if size > MAX_EXPANDED:
            raise CheckpointError(f"a tuple expands to more than {MAX_EXPANDED:,} items through shared references "
                                  "(a 'billion laughs' pickle?)")
    for _ in op.stack_after:
        stack.append(size)


def _dict_parts(d: dict):
    for k, v in d.items():
        yield k
        yield v


def check_expansion(obj: Any, limit: int = MAX_EXPANDED) -> None:
    """Refuse a loaded structure whose size, counting shared containers once per path to them,
    exceeds `limit`, or that contains itself: either would make a repr, a comparison or an error
    message that quotes it run for ever. Work is linear in the number of distinct containers."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(o: Any) -> int:
        if isinstance(o, (str, bytes)):
            return 1 + len(o) // 64
        if not isinstance(o, (list, tuple, dict, set, frozenset)):
            return 1
        key = id(o)
        got = sizes.get(key)
        if got is not None:
            return got
        if key in active:
            raise CheckpointError("structure contains itself (a reference cycle); checkpoints hold plain trees")
        active.add(key)
        total = 1
        # dict items are walked as key and value: a temporary (k, v) tuple's id could be reused
        for item in (_dict_parts(o) if isinstance(o, dict) else o):
            total += size(item)
            if total > limit:
                raise CheckpointError(f"structure expands to more than {limit:,} items through shared references "
                                      "(a 'billion laughs' pickle?)")
        active.discard(key)
        sizes[key] = total
        return total

    size(obj)


def to_plain(obj: Any) -> Any:
    """Replace OmegaConf placeholders by dicts/lists/values, keeping shared objects shared."""
    memo: dict[int, Any] = {}
    return _plain(obj, memo, 0)


def _plain(obj: Any, memo: dict[int, Any], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CheckpointError(f"structure nests deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, complex, _AnyMarker, type)):
        return obj
    if isinstance(obj, DataType):
        return obj.type
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
