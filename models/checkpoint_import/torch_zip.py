"""Read `torch.save` zip archives without `torch.load`: zip members by hand, pickle restricted.

A torch zip holds ``<prefix>/data.pkl`` (the object graph), ``<prefix>/data/<key>`` (raw storage
bytes, one record per storage) and ``<prefix>/byteorder``.  Tensors are rebuilt from those
records with their dtype, offset, sizes and strides checked against the record length, and two
tensors that shared a storage when saved share memory again (the robomimic encoder relies on
that for its aliased keys).
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Callable

import torch

from .errors import CheckpointError, UnsupportedCheckpointError
from .errors import short_repr
from .safe_unpickle import BASE_GLOBALS, Sealed, restricted_loads

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
# Upper bound on one tensor's dimensions: anything bigger is a damaged header, not a model.
_MAX_DIMS = 16
# data.pkl of the paper-size hybrid workspace is ~120 KB; its strings and containers are all the
# unpickler allocates besides tensors, so this caps that too.
_MAX_PICKLE_BYTES = 256 << 20


class _StorageType:
    """What `torch.FloatStorage` etc. resolve to: a dtype tag, never the real torch class (immutable)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointError("pickle tried to modify a storage type")


class _Storage:
    """One storage record: checked against its zip entry at unpickling time, its bytes read once,
    on first use, and shared by every tensor that views it."""

    __slots__ = ("key", "dtype", "numel", "_flat", "_read")

    def __init__(self, key: str, dtype: torch.dtype, numel: int, read: Callable[[], bytes]) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self._flat: torch.Tensor | None = None
        self._read = read

    @property
    def flat(self) -> torch.Tensor:
        if self._flat is None:
            raw = self._read()
            self._flat = (torch.frombuffer(bytearray(raw), dtype=self.dtype) if raw
                          else torch.empty(0, dtype=self.dtype))
        return self._flat


class LazyTensor:
    """A tensor whose geometry is validated but whose bytes are not read until `materialize()`.

    Workspace checkpoints carry the model, the EMA copy and the optimizer state (about 4x the
    weights); reading only what the import uses keeps memory at one copy.
    """

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    def numel(self) -> int:
        n = 1
        for s in self.size:
            n *= s
        return n

    def materialize(self) -> torch.Tensor:
        return torch.as_strided(self.storage.flat, self.size, self.stride, self.offset)

    def __repr__(self) -> str:
        return f"LazyTensor({tuple(self.size)}, {self.dtype}, storage {self.storage.key})"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _refuse_overlap(size: Any, stride: Any, key: str) -> None:
    """Refuse a tensor in which two indices reach the same element (stride 0, or strides smaller
    than the dimensions below them span). Such a tensor has more elements than the file stores:
    a 1-element storage with stride 0 would import as a 600-million-parameter layer and expand to
    gigabytes when copied. Transposed and sliced views (non-contiguous, non-overlapping) pass."""
    span = 1  # elements covered by the faster-moving dimensions so far
    for st, sz in sorted((st, sz) for sz, st in zip(size, stride) if sz > 1):
        if st < span:
            raise CheckpointError(f"tensor in storage {key} has overlapping strides (size={short_repr(size)}, "
                                  f"stride={short_repr(stride)}): its elements are not all stored in the file")
        span += (sz - 1) * st


def check_stored_bytes(tensors: Any, what: str) -> None:
    """Refuse a set of weights whose distinct views need more bytes than their storages hold:
    each view is non-overlapping by itself, but many views of one storage (offset by one element)
    could still pass a small file off as a large model. Identical views (aliases) count once."""
    views: dict[tuple, int] = {}
    stored: dict[str, int] = {}
    for t in tensors:
        if not isinstance(t, LazyTensor):
            continue
        itemsize = torch.empty((), dtype=t.dtype).element_size()
        views[(t.storage.key, t.offset, t.size, t.stride)] = t.numel() * itemsize
        stored[t.storage.key] = t.storage.numel * itemsize
    need, have = sum(views.values()), sum(stored.values())
    if need > have:
        raise CheckpointError(f"{what}: tensors need {need:,} bytes but their storages hold {have:,} "
                              "(views overlap; the file does not store these weights)")


def _make_rebuild_tensor(lazy: bool) -> Callable[..., Any]:
    def rebuild(storage: Any, storage_offset: Any, size: Any, stride: Any,
                requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None) -> Any:
        if not isinstance(storage, _Storage):
            raise CheckpointError("tensor rebuild without a storage record")
        if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)
                and len(size) <= _MAX_DIMS and all(_is_int(s) and s >= 0 for s in size)
                and all(_is_int(s) and s >= 0 for s in stride) and _is_int(storage_offset) and storage_offset >= 0):
            raise CheckpointError(f"bad tensor geometry in storage {storage.key}: size={short_repr(size)} "
                                  f"stride={short_repr(stride)}")
        n = storage.numel
        numel = 1
        for s in size:
            numel *= s
        if numel:
            last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
            if last >= n:
                raise CheckpointError(f"tensor runs past the end of storage {storage.key} ({last + 1} > {n} elements)")
            _refuse_overlap(size, stride, storage.key)
        elif storage_offset > n:
            raise CheckpointError(f"tensor offset past the end of storage {storage.key}")
        t = LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))
        return t if lazy else t.materialize()

    return rebuild


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    if not isinstance(data, (torch.Tensor, LazyTensor)):
        raise CheckpointError("parameter rebuild without tensor data")
    return data


def tensor_globals(lazy: bool = False) -> dict[tuple[str, str], Any]:
    """The allow-list for torch checkpoints: base data globals plus tensor/storage rebuilders."""
    table = dict(BASE_GLOBALS)
    table[("torch._utils", "_rebuild_tensor_v2")] = Sealed(_make_rebuild_tensor(lazy))
    table[("torch._utils", "_rebuild_parameter")] = Sealed(_rebuild_parameter)
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(name, dtype)
    table[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage", torch.uint8)
    return table


def load_torch_zip(path: str | os.PathLike) -> Any:
    """Load a `torch.save` zip with the restricted unpickler; errors are one-line CheckpointErrors."""
    with TorchZip(path) as ck:
        return ck.obj


class TorchZip:
    """A torch zip opened for reading: `obj` holds LazyTensors when `lazy`, read by `materialize`.

    Use as a context manager; the archive stays open until exit so that tensors can be read late.
    """

    def __init__(self, path: str | os.PathLike, lazy: bool = False) -> None:
        self.src = os.fspath(path)
        self.name = os.path.basename(self.src)
        self.lazy = lazy
        self._zf: zipfile.ZipFile | None = None
        self.obj: Any = None

    def __enter__(self) -> "TorchZip":
        src, name = self.src, self.name
        if not os.path.isfile(src):
            raise CheckpointError(f"{src}: no such file")
        file_size = os.path.getsize(src)
        with open(src, "rb") as fh:
            head = fh.read(8)
        if not head.startswith(b"PK\x03\x04"):
            if head[:1] == b"\x80" or head[:2] == b"\x8a\x0a":
                raise UnsupportedCheckpointError(
                    f"{name}: unsupported legacy (pre-1.6, non-zip) torch format; re-save it with a current "
                    "torch (torch.save(torch.load(f), f2)) in a trusted environment")
            raise CheckpointError(f"{name}: not a torch checkpoint (no zip header; {file_size} bytes)")
        try:
            self._zf = zipfile.ZipFile(src)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, OverflowError) as err:
            raise CheckpointError(f"{name}: damaged or truncated zip archive ({err})") from None
        try:
            self.obj = _load_from_zip(self._zf, name, file_size, self.lazy)
        except BaseException as err:
            self.close()
            if isinstance(err, CheckpointError):
                raise
            if not isinstance(err, Exception):
                raise
            raise CheckpointError(f"{name}: damaged checkpoint ({type(err).__name__}: {err})") from None
        return self

    def materialize(self, x: Any) -> Any:
        """Read a LazyTensor (or a dict/list of them); damaged bytes become a CheckpointError."""
        try:
            if isinstance(x, LazyTensor):
                return x.materialize()
            if isinstance(x, dict):
                return type(x)((k, self.materialize(v)) for k, v in x.items())
            if isinstance(x, list):
                return [self.materialize(v) for v in x]
            return x
        except CheckpointError as err:
            raise CheckpointError(f"{self.name}: {err}") from None
        except Exception as err:  # noqa: BLE001 - zipfile raises many types on damaged input
            raise CheckpointError(f"{self.name}: damaged checkpoint ({type(err).__name__}: {err})") from None

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._zf = None

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _load_from_zip(zf: zipfile.ZipFile, name: str, file_size: int, lazy: bool = False) -> Any:
    infos = {i.filename: i for i in zf.infolist()}
    pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in infos):
            raise UnsupportedCheckpointError(f"{name}: TorchScript archives are not supported; export the state_dict")
        raise CheckpointError(f"{name}: zip has no single <prefix>/data.pkl, not a torch.save checkpoint")
    prefix = pkls[0][: -len("data.pkl")]
    order = infos.get(prefix + "byteorder")
    if order is not None and _read(zf, order, file_size).strip() not in (b"little", b""):
        raise UnsupportedCheckpointError(f"{name}: big-endian torch checkpoints are not supported")
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {short_repr(pid)}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointError(f"malformed storage reference {short_repr(pid)}")
        got = storages.get(key)
        if got is not None:
            if got.dtype != stype.dtype:
                raise CheckpointError(f"storage {key} used with two dtypes")
            return got
        info = infos.get(f"{prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"storage record data/{key} is missing")
        itemsize = torch.empty((), dtype=stype.dtype).element_size()
        if numel * itemsize != info.file_size:
            raise CheckpointError(
                f"storage record data/{key} holds {info.file_size} bytes, expected {numel} x {itemsize}")
        st = _Storage(key, stype.dtype, numel, lambda info=info: _read(zf, info, file_size))
        if not lazy:
            _ = st.flat
        storages[key] = st
        return st

    if infos[pkls[0]].file_size > _MAX_PICKLE_BYTES:
        raise CheckpointError(f"{pkls[0]} holds {infos[pkls[0]].file_size:,} bytes; a checkpoint's object graph is "
                              f"under a few MiB (at most {_MAX_PICKLE_BYTES >> 20} MiB; tensors are separate records)")
    data = _read(zf, infos[pkls[0]], file_size)
    return restricted_loads(data, name, tensor_globals(lazy), persistent_load)


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> bytes:
    """Read one member, refusing sizes the file cannot hold (a damaged header, not a model)."""
    if info.compress_type != zipfile.ZIP_STORED:
        if info.file_size > 64 * file_size + (1 << 20):
            raise CheckpointError(f"member {info.filename} claims an implausible size")
    elif info.file_size > file_size or info.compress_size > file_size:
        raise CheckpointError(f"member {info.filename} claims {info.file_size} bytes, more than the file holds")
    data = zf.read(info)
    if len(data) != info.file_size:
        raise CheckpointError(f"member {info.filename} is truncated")
    return data
