"""Which torch-tensorrt build settings a given (torch-tensorrt, TensorRT) pair needs: pure logic, tested without a GPU.

Two generations are supported (docs/compile.md, "GPU path"):

* JetPack 6 (6.1/6.2: CUDA 12.6, TensorRT 10.3) with torch-tensorrt 2.8, the Orin's stack.  TensorRT 10.3
  still builds weakly typed networks: fp16 is asked for with ``enabled_precisions`` and the builder picks
  per-layer kernels; INT8 comes from ModelOpt's Q/DQ nodes (explicit quantization), with int8 enabled.
* TensorRT >= 10.12 (weak typing deprecated) and TensorRT 11 (weak typing and implicit INT8 calibration
  gone; every network strongly typed).  Precision lives in the graph: ``use_explicit_typing=True``, the
  fp16 copy of the network carries fp16 weights and casts, INT8 only through ModelOpt Q/DQ, and no
  ``enabled_precisions`` (torch-tensorrt builds that no longer take it are handled by signature).
Anything older than TensorRT 10 / torch-tensorrt 2.8 is refused with the reason, before a build starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

MIN_TORCH_TENSORRT = (2, 8)
MIN_TENSORRT = (10, 0)
STRONG_TYPING_FROM = (10, 12)     # weak typing deprecated from here; strongly typed builds available
WEAK_TYPING_REMOVED = (11, 0)     # TensorRT 11: strongly typed only, no implicit INT8 calibration


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); '2.8.0+cu126' / '2.10.0a0' -> (2, 8, 0) / (2, 10, 0)."""
    nums = []
    for part in str(text).split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        nums.append(int(m.group()))
    if not nums:
        raise ValueError(f"not a version: {text!r}")
    return tuple(nums)


@dataclass(frozen=True)
class TrtPlan:
    """How to build on one stack: the dynamo compile keywords and how the network's precision is set."""

    strongly_typed: bool
    cast_network_to: str                       # precision of the copy handed to export: fp32 | fp16
    needs_modelopt: bool
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def unsupported_reason(torch_tensorrt_version: str, tensorrt_version: str) -> str | None:
    """One line when this stack is too old for the backend, else None."""
    ttrt, trt = parse_version(torch_tensorrt_version), parse_version(tensorrt_version)
    if trt[:2] < MIN_TENSORRT:
        return (f"backend tensorrt needs TensorRT >= 10 (JetPack 6 ships 10.3); found {tensorrt_version}")
    if ttrt[:2] < MIN_TORCH_TENSORRT:
        return (f"backend tensorrt needs torch-tensorrt >= 2.8 (the JetPack 6 wheel); found {torch_tensorrt_version}")
    return None


def plan(torch_tensorrt_version: str, tensorrt_version: str, precision: str,
         compile_params: Iterable[str] | None = None) -> TrtPlan:
    """Settings for `precision` (fp32 | fp16 | int8) on this stack.

    ``compile_params``: the keyword names ``torch_tensorrt.dynamo.compile`` accepts here (from its
    signature); None means "assume the documented 2.8 set"."""
    reason = unsupported_reason(torch_tensorrt_version, tensorrt_version)
    if reason:
        raise ValueError(reason)
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"backend tensorrt supports precision fp32, fp16, int8, not {precision!r}")
    trt = parse_version(tensorrt_version)
    params = set(compile_params) if compile_params is not None else {"enabled_precisions", "use_explicit_typing"}
    strong = trt[:2] >= STRONG_TYPING_FROM
    kwargs: dict[str, Any] = {}
    cast = "fp16" if precision == "fp16" else "fp32"   # both generations: an fp16 copy for fp16 (weights halved)
    if strong:
        if "use_explicit_typing" in params:
            kwargs["use_explicit_typing"] = True
        note = ("strongly typed: precision set in the graph (fp16 weights and casts; INT8 from ModelOpt Q/DQ)"
                + ("; TensorRT 11 has no weak typing and no implicit INT8 calibration" if trt[:2] >= WEAK_TYPING_REMOVED else ""))
    else:
        if "use_explicit_typing" in params:
            kwargs["use_explicit_typing"] = False
        if "enabled_precisions" in params:
            kwargs["enabled_precisions"] = {"fp32"} | ({precision} if precision != "fp32" else set())
        note = "weakly typed (TensorRT < 10.12, e.g. JetPack 6's 10.3): enabled_precisions picks kernels per layer"
    return TrtPlan(strongly_typed=strong, cast_network_to=cast, needs_modelopt=precision == "int8",
                   compile_kwargs=kwargs, note=note)


def installed_versions() -> tuple[str, str] | None:
    """(torch-tensorrt, TensorRT) versions installed here, without importing either when metadata exists.

    JetPack installs TensorRT's Python module from a Debian package (no pip metadata): then the module's
    ``__version__`` is read."""
    from importlib import metadata

    def version_of(*names: str) -> str | None:
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return None

    ttrt = version_of("torch-tensorrt", "torch_tensorrt")
    trt = version_of("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu13")
    if ttrt is None:
        return None
    if trt is None:
        try:
            import tensorrt  # type: ignore

            trt = tensorrt.__version__
        except ImportError:
            return None
    return ttrt, trt


def torch_dtypes(names: Iterable[str]) -> set:
    """{'fp32','fp16','int8'} -> torch dtypes (kept out of `plan` so it stays importable without torch)."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
    return {table[n] for n in names}
