"""Build-or-load: the one entry point `edgedp compile` and the runtime share.

``get_compiled_sampler`` is what the runtime calls: it returns a cached sampler when the cache
entry matches (weights, backend, precision, K, device, library versions) and rebuilds otherwise.
``compile_policy`` is the same with everything reported (cache state, gate result, timings).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edgedp.compile import cache as cache_mod
from edgedp.compile.backends import all_backends, get_backend
from edgedp.compile.base import CompiledSampler
from edgedp.compile.quantize import DEFAULT_MAX_ABS, DEFAULT_MAX_RMSE, GateResult, accuracy_gate, observation_sets
from edgedp.errors import UserError

Progress = Callable[[str], None]


def parse_device(device: str | torch.device) -> torch.device:
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{device}' (allowed: cpu, cuda, cuda:N)") from None
    if d.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{device}' (allowed: cpu, cuda, cuda:N)")
    return d


def check_request(backend: str, precision: str, device: str | torch.device, steps: int | None) -> torch.device:
    """Every reason a request cannot run here, as one UserError line, before anything is built."""
    b = get_backend(backend)
    dev = parse_device(device)
    if precision not in b.precisions:
        raise UserError(f"backend {backend} supports precision {', '.join(b.precisions)}, not '{precision}'")
    reason = b.unavailable(dev)
    if reason:
        if not reason.startswith("backend"):
            reason = f"backend {backend} cannot run on {dev}: {reason}"
        raise UserError(reason)
    if steps is not None and int(steps) < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    return dev


@dataclass
class CompileReport:
    sampler: CompiledSampler
    state: str                      # hit | miss | stale
    reason: str
    path: Path
    build_s: float = 0.0
    gate: GateResult | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # which observations calibrated/gated (see quantize)


def _resolve_steps(policy: Any, steps: int | None) -> int:
    if steps is None:
        return int(policy.num_inference_steps)
    try:
        from models.schedulers import check_num_inference_steps

        check_num_inference_steps(policy.scheduler_spec, int(steps))
    except ImportError:
        pass
    except ValueError as exc:
        raise UserError(f"--steps {steps}: {exc}") from None
    return int(steps)


def compile_policy(policy: Any, backend: str, precision: str, steps: int | None, device: str | torch.device,
                   cache_dir: str | Path | None = None, calib: str | Path | None = None,
                   allow_inaccurate: bool = False, max_rmse: float = DEFAULT_MAX_RMSE,
                   max_abs: float = DEFAULT_MAX_ABS, gate_samples: int = 4, force: bool = False, gate: bool = True,
                   progress: Progress | None = None) -> CompileReport:
    say = progress or (lambda _msg: None)
    dev = check_request(backend, precision, device, steps)
    k = _resolve_steps(policy, steps)
    b = get_backend(backend)
    cache_dir = Path(cache_dir) if cache_dir else cache_mod.default_cache_dir()
    say("hashing checkpoint weights")
    # A backend that bakes the sampler into its graph keys it too (its own cache folder).
    variant = b.graph_key(policy) if hasattr(b, "graph_key") else None
    key = cache_mod.make_key(cache_mod.weights_hash(policy), backend, precision, k, dev, b.library_versions(), variant)
    found = cache_mod.lookup(cache_dir, key)
    needs_gate = gate and precision != "fp32"
    cs = None
    if found.state == "hit" and not force:
        say(f"cache hit: {found.path}")
        try:
            cs = b.load(policy, precision, k, dev, found.path, say)
        except cache_mod.UnusableEntry as exc:
            say(f"cached entry unusable ({exc}): rebuilding it")
            found = cache_mod.Lookup("stale", found.path, f"entry unusable: {exc}")
    if cs is not None:
        result = None
        manifest = found.manifest or {}
        calibration = dict(manifest.get("calibration_detail") or {})
        if manifest.get("calibration") and "source" not in calibration:
            calibration["source"] = manifest["calibration"]
        recorded = manifest.get("gate")
        if recorded:
            result = GateResult(recorded["rmse"], recorded["max_abs"], recorded["max_rmse"],
                                recorded["max_abs_limit"], recorded["n"], recorded["source"])
        if needs_gate and (result is None or result.max_rmse != max_rmse or result.max_abs_limit != max_abs):
            # Built without a gate (e.g. by `bench`) or under other limits: check before handing it out.
            sets = observation_sets(policy, calib, n_calib=gate_samples, n_heldout=gate_samples)
            ref = get_backend("eager").build(policy, "fp32", k, dev, found.path, None, say)
            result = accuracy_gate(ref, cs, sets, k, max_rmse, max_abs)
            calibration = {"source": sets.source, **sets.detail, "note": "gate re-checked on a cache hit"}
        accepted = bool((found.manifest or {}).get("allowed_inaccurate")) and recorded is not None \
            and result.max_rmse == recorded["max_rmse"] and result.max_abs_limit == recorded["max_abs_limit"]
        if result is not None and needs_gate and not result.passed and not (allow_inaccurate or accepted):
            raise UserError(f"refusing {backend}/{precision}: {result.line()}; "
                            f"rerun with --allow-inaccurate to accept it")
        return CompileReport(cs, "hit", "", found.path, 0.0, result, found.manifest or {}, calibration)

    state = found.state if not (force and found.state == "hit") else "stale"
    reason = found.reason or ("--force" if force else "")
    sets = None
    if needs_gate or calib or precision == "int8":
        say("encoding calibration and held-out observations")
        sets = observation_sets(policy, calib, n_calib=gate_samples, n_heldout=gate_samples)
    build_dir = cache_mod.new_build_dir(cache_dir, key)
    try:
        t0 = time.perf_counter()
        say(f"building {backend}/{precision} K={k} on {dev}")
        cs = b.build(policy, precision, k, dev, build_dir, sets, say)
        build_s = time.perf_counter() - t0
        result = None
        if needs_gate:
            say("accuracy gate: float32 reference vs candidate on held-out observations")
            ref = get_backend("eager").build(policy, "fp32", k, dev, build_dir, None, say)
            result = accuracy_gate(ref, cs, sets, k, max_rmse, max_abs)
            if not result.passed and not allow_inaccurate:
                raise UserError(f"refusing to cache {backend}/{precision}: {result.line()}; "
                                f"rerun with --allow-inaccurate to accept it")
        extra = {"build_s": round(build_s, 3), "weight_bytes": cs.weight_bytes, "info": cs.info,
                 "gate": result.to_dict() if result else None,
                 "calibration": sets.source if sets else None,
                 "calibration_detail": {"source": sets.source, **sets.detail} if sets else None,
                 "allowed_inaccurate": bool(result and not result.passed)}
        manifest = cache_mod.commit(build_dir, found.path, key, extra)
    except BaseException:
        cache_mod.abandon(build_dir)
        raise
    if backend == "inductor":
        # inductor's cache moved with the directory: point later compiles at the final place.
        import os

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((found.path / "inductor").resolve())
    calibration = {"source": sets.source, **sets.detail} if sets else {}
    return CompileReport(cs, state, reason, found.path, build_s, result, manifest, calibration)


def get_compiled_sampler(policy: Any, backend: str, precision: str, steps: int | None, device: str | torch.device,
                         cache_dir: str | Path | None = None, progress: Progress | None = None,
                         allow_inaccurate: bool = False) -> CompiledSampler:
    """The runtime's call: cached when valid, rebuilt when stale; UserError (exit 2) when it cannot run here."""
    return compile_policy(policy, backend, precision, steps, device, cache_dir,
                          allow_inaccurate=allow_inaccurate, progress=progress).sampler


def available_backends(device: str | torch.device = "cpu") -> list[tuple[str, str]]:
    """(backend, precision) pairs this machine can run on `device`."""
    dev = parse_device(device)
    out = []
    for name, b in all_backends().items():
        if b.unavailable(dev) is None:
            out.extend((name, p) for p in b.precisions)
    return out
