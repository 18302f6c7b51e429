"""Compile, quantize and profile the denoiser: backends behind one sampler interface, with a cache.

Runtime entry point: :func:`get_compiled_sampler`.  See docs/compile.md.
"""
from __future__ import annotations

from edgedp.compile.api import (
    CompileReport,
    available_backends,
    check_request,
    compile_policy,
    get_compiled_sampler,
)
from edgedp.compile.backends import all_backends, get_backend
from edgedp.compile.base import CompiledSampler

__all__ = [
    "CompileReport", "CompiledSampler", "all_backends", "available_backends", "check_request",
    "compile_policy", "get_backend", "get_compiled_sampler",
]
