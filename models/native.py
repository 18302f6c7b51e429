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
from pathlib import Path
from typing import Any

import torch
import yaml

from models.atomic_file import atomic_dir
from models.safe_yaml import YamlInputError, read_yaml_file
from models.spec import FORMAT_VERSION, PolicySpec

FORMAT_NAME = "edgedp-native"
SPEC_FILE = "policy.yaml"
WEIGHTS_FILE = "model.safetensors"


class NativeCheckpointError(ValueError):
    """A native checkpoint cannot be read; the message names the file and the problem."""


_MAX_SPEC_BYTES = 1024 * 1024  # policy.yaml is a few KiB


def _implausible(spec: PolicySpec) -> str | None:
    """The first size in the spec beyond any real policy, as `field: got X (allowed)`, else None.

    The spec decides how much memory the policy takes before any weight is compared with it, so a
    hand-edited policy.yaml with down_dims [10**6] or 10**9 diffusion timesteps must stop here."""
    from models.checkpoint_import.fields import MAX_DIM, MAX_IMAGE_SIDE, MAX_STEPS, MAX_TRAIN_TIMESTEPS

    def bad(value: Any, hi: int) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi

    checks: list[tuple[str, Any, int]] = [
        ("horizon", spec.horizon, MAX_STEPS), ("n_obs_steps", spec.n_obs_steps, MAX_STEPS),
        ("n_action_steps", spec.n_action_steps, MAX_STEPS), ("action_dim", spec.action_dim, MAX_DIM),
        ("unet.kernel_size", spec.unet.kernel_size, 63), ("unet.n_groups", spec.unet.n_groups, MAX_DIM),
        ("unet.diffusion_step_embed_dim", spec.unet.diffusion_step_embed_dim, MAX_DIM),
        ("encoder.width", spec.encoder.width, MAX_DIM), ("encoder.num_keypoints", spec.encoder.num_keypoints, MAX_DIM),
        ("encoder.feature_dim", spec.encoder.feature_dim, MAX_DIM),
    ]
    checks += [(f"unet.down_dims[{i}]", d, MAX_DIM) for i, d in enumerate(spec.unet.down_dims)]
    if len(spec.unet.down_dims) > 8:
        return f"unet.down_dims: {len(spec.unet.down_dims)} levels (at most 8)"
    for k, shape in {**spec.image_features, **spec.state_features}.items():
        checks += [(f"features.{k}[{i}]", d, MAX_IMAGE_SIDE if len(shape) == 3 else MAX_DIM) for i, d in enumerate(shape)]
    for name in ("crop_shape", "resize_shape"):
        checks += [(f"encoder.{name}[{i}]", d, MAX_IMAGE_SIDE) for i, d in enumerate(getattr(spec.encoder, name) or [])]
    sched = spec.scheduler if isinstance(spec.scheduler, dict) else {}
    for key in ("num_train_timesteps", "num_inference_steps"):
        if key in sched:
            checks.append((f"scheduler.{key}", sched[key], MAX_TRAIN_TIMESTEPS))
    for field, value, hi in checks:
        if bad(value, hi):
            shown = f"<int of {value.bit_length()} bits>" if isinstance(value, int) and value.bit_length() > 64 \
                else repr(value)[:40]
            return f"{field}: got {shown} (an integer from 0 to {hi})"
    return None


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
        # duplicate keys, aliases, non-finite numbers, oversized integers and deep nesting are refused
        doc = read_yaml_file(f, max_bytes=_MAX_SPEC_BYTES)
    except YamlInputError as exc:
        where, what = exc.problems[0]
        if not where:  # a whole-file problem: the message starts with the path already
            what = what.replace(str(f), "").strip()
            if what.startswith("is not valid YAML"):
                what = f"invalid YAML ({what.removeprefix('is not valid YAML').strip()})"
        raise NativeCheckpointError(f"{f}: {where}: {what}" if where else f"{f}: {what}") from None
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
    except (TypeError, ValueError) as exc:  # e.g. a list where a number belongs, caught by no type check
        raise NativeCheckpointError(f"{f}: spec: {str(exc).splitlines()[0][:160]}") from None
    problem = _implausible(spec)
    if problem:
        raise NativeCheckpointError(f"{f}: spec.{problem}")
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

    with atomic_dir(dest) as tmp:  # the old checkpoint or the new one, never a mix (models/atomic_file.py)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        with open(tmp / SPEC_FILE, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False, default_flow_style=None)
        _fix_modes(tmp)
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
    _check_header(spec, wf)  # before anything of the spec's size is allocated
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


def _check_header(spec: PolicySpec, wf: Path) -> None:
    """Compare the weights file's header with the shapes the spec implies, on the meta device
    (no memory). The policy built for real afterwards is then no larger than the weights file,
    which safetensors checks byte for byte: a policy.yaml cannot make us allocate more than that."""
    from safetensors import SafetensorError, safe_open

    from models.policy import DiffusionPolicy

    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in DiffusionPolicy(spec).state_dict().items()}
    except (ValueError, TypeError) as exc:
        raise NativeCheckpointError(f"{wf.parent / SPEC_FILE}: {str(exc).splitlines()[0][:160]}") from None
    try:
        with safe_open(str(wf), "pt") as fh:
            stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NativeCheckpointError(f"{wf}: unreadable safetensors file ({first})") from None
    for k, shape in expected.items():
        if k not in stored:
            raise NativeCheckpointError(f"{wf}: missing tensor {k!r} (the architecture in {SPEC_FILE} needs it)")
        if stored[k] != shape:
            raise NativeCheckpointError(f"{wf}: tensor {k!r} has shape {stored[k]}, the spec needs {shape}")


def checkpoint_hash(directory: str | os.PathLike) -> str:
    """sha256 over policy.yaml's spec and the weights file bytes (engine cache key)."""
    p = Path(directory)
    h = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        with open(p / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
