"""The bytes between a robot and the policy server: msgpack maps of plain arrays, nothing executable.

Why msgpack with raw buffers: it decodes to dicts, lists, numbers, strings and bytes only (no object hooks,
no pickle), so a hostile payload can at worst be refused; the arrays travel as their raw little-endian bytes,
so a 96x96x3 uint8 window costs its size and no text conversion.

Format (version 1), every map key a string:

    array   = {"dtype": "<f4" | "<f8" | "|u1" | "<i8", "shape": [int, ...], "data": bytes}
              data is C-order, little-endian, exactly prod(shape) * itemsize bytes
    request = {"v": 1, "obs": {feature: array, ...}, "noise": array (optional, (horizon, action_dim)),
               "conditioning": {"init" | "prefix" | "n_fixed" | "n_overlap": array} (optional)}
    reply   = {"v": 1, "actions": array (horizon, action_dim) <f4, "timing": {stage: ms}, "batch": int}
            | {"v": 1, "error": "one line"}
    health  = {"v": 1, "spec": {...}}   (GET /health; spec = what the robot checks before it powers anything)

Bounds: a request is at most MAX_REQUEST_BYTES, holds at most MAX_ARRAYS arrays of at most MAX_NDIM axes,
and every array's byte count must match its dtype and shape; anything else is refused with one line
(WireError) before any array is built.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_ARRAYS = 32
MAX_NDIM = 6
ALLOWED_DTYPES = {"<f4": np.float32, "<f8": np.float64, "|u1": np.uint8, "<i8": np.int64}
CONDITIONING_KEYS = ("init", "prefix", "n_fixed", "n_overlap")
TOKEN_HEADER = "authorization"  # "Bearer <token>"


class WireError(ValueError):
    """A payload that does not follow the format above; the message is one line naming what is wrong."""


def _msgpack():
    try:
        import msgpack
    except ImportError:
        raise WireError("msgpack is not installed: pip install 'edgedp[serve]'") from None
    return msgpack


# ---------------------------------------------------------------------------------------------- arrays
def pack_array(x: Any) -> dict:
    """A numpy/torch array as {dtype, shape, data}; float16/bfloat16 and other types are sent as float32."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().to("cpu").numpy()
    a = np.asarray(x)
    if a.dtype == np.uint8:
        a = np.ascontiguousarray(a)
    elif a.dtype.kind in "iub":
        a = np.ascontiguousarray(a, dtype="<i8")
    elif a.dtype == np.float64:
        a = np.ascontiguousarray(a, dtype="<f8")
    else:
        a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack_array(obj: Any, name: str) -> np.ndarray:
    """{dtype, shape, data} -> a read-only numpy view, after every check; WireError names `name` otherwise."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise WireError(f"{name}: expected an array map with keys dtype, shape, data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"{name}: dtype {dtype!r} not allowed (allowed: {', '.join(ALLOWED_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in shape)):
        raise WireError(f"{name}: shape must be a list of at most {MAX_NDIM} non-negative integers")
    if not isinstance(data, bytes):
        raise WireError(f"{name}: data must be raw bytes")
    dt = np.dtype(ALLOWED_DTYPES[dtype]).newbyteorder("<")
    want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if want != len(data):
        raise WireError(f"{name}: {len(data)} data bytes do not match dtype {dtype} and shape {shape} ({want})")
    return np.frombuffer(data, dtype=dt).reshape(shape)


# -------------------------------------------------------------------------------------------- messages
def encode_request(obs: Mapping[str, Any], noise: Any = None, conditioning: Optional[Mapping[str, Any]] = None) -> bytes:
    msg: dict[str, Any] = {"v": VERSION, "obs": {str(k): pack_array(v) for k, v in obs.items()}}
    if noise is not None:
        msg["noise"] = pack_array(noise)
    if conditioning:
        msg["conditioning"] = {k: pack_array(v) for k, v in conditioning.items() if v is not None}
    return _msgpack().packb(msg, use_bin_type=True)


def _load(body: bytes, what: str) -> dict:
    if len(body) > MAX_REQUEST_BYTES:
        raise WireError(f"{what}: {len(body)} bytes is more than the {MAX_REQUEST_BYTES} allowed")
    msgpack = _msgpack()
    try:
        # strict_map_key: keys are str/bytes only; the max_*_len bounds stop a small payload claiming huge
        # containers; raw=False decodes strings as UTF-8 (bytes stay bytes).
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                              max_bin_len=MAX_REQUEST_BYTES, max_str_len=4096, max_array_len=4096,
                              max_map_len=256, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise WireError(f"{what}: not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise WireError(f"{what}: expected a map with v={VERSION}")
    return msg


def decode_request(body: bytes) -> dict:
    """-> {"obs": {key: ndarray}, "noise": ndarray | None, "conditioning": {key: ndarray}}."""
    msg = _load(body, "request")
    extra = set(msg) - {"v", "obs", "noise", "conditioning"}
    if extra:
        raise WireError(f"request: unknown key(s) {', '.join(sorted(map(str, extra)))}")
    obs = msg.get("obs")
    if not isinstance(obs, dict) or not obs:
        raise WireError("request: 'obs' must be a non-empty map of feature name to array")
    cond = msg.get("conditioning") or {}
    if not isinstance(cond, dict) or set(cond) - set(CONDITIONING_KEYS):
        raise WireError(f"request: 'conditioning' keys must be among {', '.join(CONDITIONING_KEYS)}")
    if len(obs) + len(cond) + 1 > MAX_ARRAYS:
        raise WireError(f"request: more than {MAX_ARRAYS} arrays")
    out = {"obs": {k: unpack_array(v, f"obs[{k}]") for k, v in obs.items()},
           "noise": unpack_array(msg["noise"], "noise") if msg.get("noise") is not None else None,
           "conditioning": {k: unpack_array(v, f"conditioning[{k}]") for k, v in cond.items()}}
    return out


def encode_reply(actions: Any, timing: Mapping[str, float], batch: int) -> bytes:
    return _msgpack().packb({"v": VERSION, "actions": pack_array(np.asarray(actions, dtype=np.float32)),
                             "timing": {k: float(v) for k, v in timing.items()}, "batch": int(batch)},
                            use_bin_type=True)


def encode_error(message: str) -> bytes:
    return _msgpack().packb({"v": VERSION, "error": str(message).splitlines()[0][:500]}, use_bin_type=True)


def encode_health(spec: Mapping[str, Any]) -> bytes:
    return _msgpack().packb({"v": VERSION, "spec": dict(spec)}, use_bin_type=True)


def decode_reply(body: bytes) -> dict:
    """-> {"actions": ndarray, "timing": dict, "batch": int} | {"error": str} | {"spec": dict}."""
    msg = _load(body, "reply")
    if "error" in msg:
        return {"error": str(msg["error"])}
    if "spec" in msg:
        if not isinstance(msg["spec"], dict):
            raise WireError("reply: 'spec' must be a map")
        return {"spec": msg["spec"]}
    actions = unpack_array(msg.get("actions"), "actions")
    timing = msg.get("timing") or {}
    if not isinstance(timing, dict) or not all(isinstance(v, (int, float)) for v in timing.values()):
        raise WireError("reply: 'timing' must map stage names to milliseconds")
    return {"actions": actions, "timing": {str(k): float(v) for k, v in timing.items()},
            "batch": int(msg.get("batch", 1))}
