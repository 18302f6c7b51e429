"""On-disk cache of compiled samplers, one directory per (weights, backend, precision, K, device).

Why keyed this way: a TensorRT engine or a packed int8 file is only valid for the exact weights
it was built from, the K it unrolled, the device it was tuned on and the library versions that
wrote it.  The directory name holds what selects an entry (weights hash, backend, precision, K,
device); the manifest inside also records the library versions, and an entry whose versions or
files do not match is *stale* and rebuilt.  Entries are built in a temporary sibling directory and
renamed into place, so a crash never leaves a half-written entry that looks valid.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from firmware_bridge.atomic_file import atomic_write_text, replace_dir

MANIFEST = "manifest.json"
FORMAT = 1


def default_cache_dir() -> Path:
    root = os.environ.get("EDGEDP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgedp")
    return Path(root) / "compiled"


def weights_hash(policy: Any) -> str:
    """sha256 over every tensor of the policy (names, dtypes, shapes, bytes): the checkpoint's identity."""
    h = hashlib.sha256()
    for name, t in sorted(policy.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes())
    spec = getattr(policy, "spec", None)
    if spec is not None and hasattr(spec, "scheduler"):
        h.update(json.dumps(spec.scheduler, sort_keys=True, default=str).encode())
    return h.hexdigest()


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        idx = device.index or 0
        name = torch.cuda.get_device_name(idx) if torch.cuda.is_available() else "cuda"
        return f"cuda-{name}"
    return f"cpu-{platform.machine()}"


@dataclass(frozen=True)
class CacheKey:
    weights: str
    backend: str
    precision: str
    steps: int
    device: str
    versions: tuple[tuple[str, str], ...]
    variant: str = ""  # short hash of what a backend bakes into its graph (graph_key: the sampler), "" if nothing

    def dirname(self) -> str:
        safe_dev = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.device)
        name = f"{self.weights[:16]}-{self.backend}-{self.precision}-K{self.steps}-{safe_dev}"
        # One folder per variant: switching a loop backend between DDIM and DPM-Solver++ finds both builds instead
        # of rebuilding one over the other. Library versions stay out of the name (a new version rebuilds in place).
        return f"{name}-s{self.variant}" if self.variant else name

    def to_dict(self) -> dict[str, Any]:
        return {"weights_sha256": self.weights, "backend": self.backend, "precision": self.precision,
                "steps": self.steps, "device": self.device, "versions": dict(self.versions)}


def make_key(weights: str, backend: str, precision: str, steps: int, device: torch.device,
             versions: dict[str, str], variant: dict[str, str] | None = None) -> CacheKey:
    """``variant``: what the backend bakes into its graph beyond the weights (its graph_key); recorded and compared
    with the versions, and it names its own folder."""
    v = {**versions, **(variant or {})}
    v.setdefault("python", platform.python_version())
    tag = hashlib.sha256(json.dumps(sorted(variant.items())).encode()).hexdigest()[:8] if variant else ""
    return CacheKey(weights, backend, precision, int(steps), device_tag(device), tuple(sorted(v.items())), tag)


class UnusableEntry(ValueError):
    """A backend found a cache hit it cannot load (a record file edited, truncated or from another edgedp):
    compile_policy treats the entry as stale and rebuilds it, like any other stale entry (a direct
    ``backend.load`` caller gets the message, which says to rebuild with --force)."""


class MissingEntryFile(UnusableEntry, FileNotFoundError):
    """An UnusableEntry because a file the entry's record names is not there."""


@dataclass
class Lookup:
    state: str               # "hit" | "miss" | "stale"
    path: Path
    reason: str = ""
    manifest: dict[str, Any] | None = None


def lookup(cache_dir: Path, key: CacheKey) -> Lookup:
    path = Path(cache_dir) / key.dirname()
    mpath = path / MANIFEST
    if not mpath.is_file():
        return Lookup("miss", path, "no entry" if not path.exists() else "entry has no manifest")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return Lookup("stale", path, "manifest unreadable")
    if manifest.get("format") != FORMAT:
        return Lookup("stale", path, f"cache format {manifest.get('format')} != {FORMAT}")
    want = key.to_dict()
    for field in ("weights_sha256", "backend", "precision", "steps", "device"):
        if manifest.get("key", {}).get(field) != want[field]:
            return Lookup("stale", path, f"{field} changed")
    have_v = manifest.get("key", {}).get("versions", {})
    for lib, ver in want["versions"].items():
        if have_v.get(lib) != ver:
            return Lookup("stale", path, f"{lib} {have_v.get(lib)} -> {ver}")
    for rel in manifest.get("files", []):
        if not (path / rel).exists():
            return Lookup("stale", path, f"file {rel} missing")
    return Lookup("hit", path, "", manifest)


def new_build_dir(cache_dir: Path, key: CacheKey) -> Path:
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key.dirname()}.building-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    return tmp


def commit(build_dir: Path, final: Path, key: CacheKey, extra: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest, then move the finished entry into place (replacing a stale one)."""
    files = sorted(str(p.relative_to(build_dir)) for p in build_dir.rglob("*") if p.is_file())
    manifest = {"format": FORMAT, "key": key.to_dict(), "files": files, "created_unix": time.time(), **extra}
    atomic_write_text(build_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
    replace_dir(build_dir, final)  # fsynced, swapped in whole (a stale entry moved aside, then removed)
    return manifest


def abandon(build_dir: Path) -> None:
    shutil.rmtree(build_dir, ignore_errors=True)
