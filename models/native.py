"""The native checkpoint: a directory with a readable ``policy.yaml`` and a ``model.safetensors``.

Why a directory of two plain files: the architecture can be read (and diffed, and checked by
``edgedp check``) without loading weights, and loading never unpickles anything, so a checkpoint
from anywhere cannot run code. Imports from LeRobot or the original ``.ckpt`` end here too.

policy.yaml:
    format: edgedp-native
    format_version: 1
    spec: {...PolicySpec.to_dict()...}
    provenance: {...}           (free-form: where the weights came from, when, by what)
model.safetensors:
    every tensor of DiffusionPolicy.state_dict() (normalizer statistics included), float32 or
    whatever dtype the policy had, contiguous, no aliases; metadata {"format": "edgedp-native"}.

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place,
so a crash leaves either the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from models.spec import FORMAT_VERSION, PolicySpec

FORMAT_NAME = "edgedp-native"
SPEC_FILE = "policy.yaml"
WEIGHTS_FILE = "model.safetensors"


class NativeCheckpointError(ValueError):
    """A native checkpoint cannot be read; the message names the file and the problem."""


def is_native_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SPEC_FILE).is_file()


def read_spec(path: str | os.PathLike) -> tuple[PolicySpec, dict[str, Any]]:
    """Parse policy.yaml only (cheap): the spec and the whole document."""
    from models.spec import SpecError

    p = Path(path)
    f = p / SPEC_FILE
    if not p.is_dir():
        raise NativeCheckpointError(f"{p}: not a native checkpoint directory")
    if not f.is_file():
        raise NativeCheckpointError(f"{f}: missing (a native checkpoint needs {SPEC_FILE} and {WEIGHTS_FILE})")
    try:
        doc = yaml.safe_load(f.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NativeCheckpointError(f"{f}: invalid YAML ({first})") from None
    if not isinstance(doc, dict):
        raise NativeCheckpointError(f"{f}: expected a mapping with 'format' and 'spec', got {type(doc).__name__}")
    if doc.get("format") != FORMAT_NAME:
        raise NativeCheckpointError(f"{f}: format is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise NativeCheckpointError(f"{f}: format_version {version!r} is not supported (this edgedp reads {FORMAT_VERSION})")
    if not isinstance(doc.get("spec"), dict):
        raise NativeCheckpointError(f"{f}: 'spec' is missing or not a mapping")
    try:
        spec = PolicySpec.from_dict(doc["spec"])
    except SpecError as exc:
        raise NativeCheckpointError(f"{f}: spec.{exc}") from None
    try:
        from models.schedulers import SchedulerSpec

        SchedulerSpec.from_dict(spec.scheduler)
    except (ValueError, TypeError) as exc:
        raise NativeCheckpointError(f"{f}: spec.scheduler: {exc}") from None
    return spec, doc


def save_native(policy, directory: str | os.PathLike, provenance: dict[str, Any] | None = None,
                overwrite: bool = True) -> Path:
    """Write ``policy`` (a DiffusionPolicy) as a native checkpoint directory, atomically."""
    from safetensors.torch import save_file

    dest = Path(directory)
    if dest.exists() and not dest.is_dir():
        raise NativeCheckpointError(f"{dest}: exists and is not a directory")
    if dest.exists() and not overwrite:
        raise NativeCheckpointError(f"{dest}: already exists")
    if dest.exists() and any(dest.iterdir()) and not is_native_dir(dest):
        raise NativeCheckpointError(f"{dest}: exists, is not empty and is not a native checkpoint; refusing to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)

    # Fresh contiguous copies: safetensors refuses shared or strided storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in policy.state_dict().items()}
    spec_dict = policy.spec.to_dict()
    prov = dict(policy.spec.provenance or {})
    prov.update(provenance or {})
    prov.setdefault("saved_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    prov.setdefault("torch", str(torch.__version__))
    doc = _plain({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "spec": spec_dict, "provenance": prov})

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    old: Path | None = None
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        with open(tmp / SPEC_FILE, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False, default_flow_style=None)
            fh.flush()
            os.fsync(fh.fileno())
        _fix_modes(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _fix_modes(folder: Path) -> None:
    """mkdtemp makes 0700 folders; give the checkpoint the modes a plain mkdir/open would (umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~mask)


def _plain(value: Any) -> Any:
    """Only YAML's own types go into policy.yaml (safe_load must read back exactly what was written)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def load_native(directory: str | os.PathLike, device: str | torch.device = "cpu",
                num_inference_steps: int | None = None, seed: int = 0):
    """Build a DiffusionPolicy from a native checkpoint; every mismatch is a NativeCheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from models.policy import DiffusionPolicy

    p = Path(directory)
    spec, _ = read_spec(p)
    wf = p / WEIGHTS_FILE
    if not wf.is_file():
        raise NativeCheckpointError(f"{wf}: missing")
    try:
        tensors = load_file(str(wf), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise NativeCheckpointError(f"{wf}: unreadable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        policy = DiffusionPolicy(spec, num_inference_steps=num_inference_steps, seed=seed)
    except ValueError as exc:
        raise NativeCheckpointError(f"{p / SPEC_FILE}: {exc}") from None
    expected = policy.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NativeCheckpointError(f"{wf}: missing tensor {missing[0]!r}{more}")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise NativeCheckpointError(f"{wf}: unexpected tensor {extra[0]!r}{more} for the architecture in {SPEC_FILE}")
    for k, ref in expected.items():
        if tuple(tensors[k].shape) != tuple(ref.shape):
            raise NativeCheckpointError(
                f"{wf}: tensor {k!r} has shape {tuple(tensors[k].shape)}, the spec needs {tuple(ref.shape)}")
        if tensors[k].dtype.is_floating_point != ref.dtype.is_floating_point:
            raise NativeCheckpointError(f"{wf}: tensor {k!r} has dtype {tensors[k].dtype}, expected {ref.dtype}")
    try:
        return policy.adopt_weights(tensors, device, num_inference_steps)
    except ValueError as exc:
        raise NativeCheckpointError(f"{p}: {exc}") from None


def checkpoint_hash(directory: str | os.PathLike) -> str:
    """sha256 over policy.yaml's spec and the weights file bytes (engine cache key)."""
    p = Path(directory)
    h = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        with open(p / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
