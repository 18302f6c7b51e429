"""Turn a checkpoint reference (a path or ``preset:NAME``) into a DiffusionPolicy, or a one-line UserError.

Formats are tried in order through ``FORMATS``, a list of CheckpointFormat entries (detector,
loader, cheap describer). The native format and presets live here; importers for LeRobot
``pretrained_model/`` folders and original ``.ckpt`` files add entries with ``register_format``.
Model-side errors (ValueError subclasses naming file and problem) become UserError here, so the
CLI prints one line and never a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from edgedp.config import PRESET_PREFIX
from edgedp.errors import UserError, one_line
from models.spec import PolicySpec


@dataclass(frozen=True)
class CheckpointFormat:
    """One way of reading a checkpoint.

    detect(path) -> bool must be cheap and must not raise on unrelated files.
    load(path, device, num_inference_steps, seed) -> DiffusionPolicy.
    describe(path) -> PolicySpec, reading metadata only (no weights).
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str, "int | None", int], Any]
    describe: Callable[[Path], PolicySpec]
    # Optional: load(path, device, K, seed, scheduler kind or None), for formats that switch the
    # sampler while reading (foreign imports); others are rebuilt with the new kind after loading.
    load_with_scheduler: "Callable[[Path, str, int | None, int, str | None], Any] | None" = None


def _native_load(path: Path, device: str, k: int | None, seed: int):
    from models.native import load_native

    return load_native(path, device=device, num_inference_steps=k, seed=seed)


def _native_describe(path: Path) -> PolicySpec:
    from models.native import read_spec

    return read_spec(path)[0]


def _native_detect(path: Path) -> bool:
    from models.native import is_native_dir

    return is_native_dir(path)


FORMATS: list[CheckpointFormat] = [
    CheckpointFormat("native", _native_detect, _native_load, _native_describe),
]


def register_format(fmt: CheckpointFormat, first: bool = False) -> None:
    """Add a format (replacing one of the same name); ``first`` puts it ahead of the others."""
    FORMATS[:] = [f for f in FORMATS if f.name != fmt.name]
    if first:
        FORMATS.insert(0, fmt)
    else:
        FORMATS.append(fmt)


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"policy device {device!r}: not a device (allowed: cpu, cuda[:N], mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"policy device {device!r}: CUDA is not available on this machine (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"policy device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"policy device {device!r}: MPS is not available on this machine (use cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"policy device {device!r}: unsupported (allowed: cpu, cuda[:N], mps)")
    return dev


def _find_format(path: Path) -> CheckpointFormat:
    if not path.exists():
        raise UserError(f"policy checkpoint not found: {path} (a checkpoint path, or {PRESET_PREFIX}NAME)")
    for fmt in FORMATS:
        try:
            if fmt.detect(path):
                return fmt
        except OSError:
            continue
    names = ", ".join(f.name for f in FORMATS)
    raise UserError(f"policy checkpoint {path}: not a recognised checkpoint (formats understood: {names}, {PRESET_PREFIX}NAME)")


def _preset_spec(name: str) -> PolicySpec:
    from models.presets import load_preset

    try:
        return load_preset(name)
    except ValueError as exc:
        raise UserError(f"policy checkpoint {PRESET_PREFIX}{name}: {one_line(exc)}") from None


SCHEDULER_KINDS = ("ddpm", "ddim")


def _sampler_override(scheduler: str | None, steps: int | None, num_inference_steps: int | None) -> tuple[str | None, int | None]:
    """Check the (scheduler, K) override of ``load_policy``; ``steps`` is the CLI's name for K."""
    if steps is not None and num_inference_steps is not None and steps != num_inference_steps:
        raise UserError(f"steps={steps} and num_inference_steps={num_inference_steps} disagree (give one)")
    k = steps if steps is not None else num_inference_steps
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        name = "steps" if steps is not None else "num_inference_steps"  # the argument the caller used
        raise UserError(f"{name}: {k!r} is not a positive integer")
    if scheduler is not None:
        if not isinstance(scheduler, str) or scheduler.lower() not in SCHEDULER_KINDS:
            raise UserError(f"scheduler: {scheduler!r} not supported (supported: {', '.join(SCHEDULER_KINDS)})")
        scheduler = scheduler.lower()
    return scheduler, k


def _with_scheduler(policy, kind: str, k: int | None, device: torch.device, seed: int):
    """The same weights under another sampler kind (DDIM needs no retraining): a policy rebuilt from the
    spec with ``scheduler.kind`` replaced, as ``edgedp import --scheduler`` does for foreign checkpoints."""
    import copy

    from models.policy import DiffusionPolicy

    spec = policy.spec
    if spec.scheduler.get("kind") == kind:
        return policy
    new_spec = copy.deepcopy(spec)
    new_spec.scheduler = dict(spec.scheduler, kind=kind)
    new_spec.provenance = dict(spec.provenance, scheduler=f"overridden to {kind.upper()} at load "
                                                          f"(trained with {str(spec.scheduler.get('kind')).upper()})")
    rebuilt = DiffusionPolicy(new_spec, num_inference_steps=k, seed=seed)
    return rebuilt.adopt_weights(policy.state_dict(), device, k)


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu", num_inference_steps: int | None = None,
                seed: int = 0, scheduler: str | None = None, steps: int | None = None):
    """A ready (eval-mode) DiffusionPolicy from a native dir, any registered format, or ``preset:NAME``.

    ``preset:NAME`` builds random weights from ``seed``, identically every time; ``seed`` also seeds
    the policy's noise generator. ``scheduler`` ("ddpm" | "ddim") and ``steps`` (K, same as
    ``num_inference_steps``) override the trained sampler exactly as ``edgedp import --scheduler
    ddim --steps 10`` does: the weights are untouched, only the sampling loop changes.
    """
    scheduler, num_inference_steps = _sampler_override(scheduler, steps, num_inference_steps)
    dev = _resolve_device(device)
    policy = _load(path, dev, num_inference_steps, seed, scheduler)
    if scheduler is not None and policy.scheduler_spec.kind != scheduler:
        try:
            policy = _with_scheduler(policy, scheduler, num_inference_steps, dev, seed)
        except ValueError as exc:
            raise UserError(f"policy checkpoint {path}: scheduler {scheduler}: {one_line(exc)}") from None
    return policy.eval()


def _load(path: str | os.PathLike, dev: torch.device, num_inference_steps: int | None, seed: int,
          scheduler: str | None):
    from models.policy import DiffusionPolicy

    ref = str(path)
    if ref.startswith(PRESET_PREFIX):
        name = ref[len(PRESET_PREFIX):]
        spec = _preset_spec(name)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                policy = DiffusionPolicy(spec, num_inference_steps=num_inference_steps, seed=seed)
            policy.to(dev)
            if num_inference_steps is not None:
                policy.set_num_inference_steps(num_inference_steps)
        except ValueError as exc:
            raise UserError(f"policy checkpoint {ref}: {one_line(exc)}") from None
        return policy.eval()
    p = Path(ref).expanduser()
    fmt = _find_format(p)
    try:
        if fmt.load_with_scheduler is not None:
            policy = fmt.load_with_scheduler(p, str(dev), num_inference_steps, seed, scheduler)
        else:
            policy = fmt.load(p, str(dev), num_inference_steps, seed)
    except UserError:
        raise
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"policy checkpoint {p} ({fmt.name}): {one_line(exc)}") from None
    return policy.eval()


def load_spec(path: str | os.PathLike) -> PolicySpec:
    """The PolicySpec of a checkpoint or preset without loading weights."""
    ref = str(path)
    if ref.startswith(PRESET_PREFIX):
        return _preset_spec(ref[len(PRESET_PREFIX):])
    p = Path(ref).expanduser()
    fmt = _find_format(p)
    try:
        return fmt.describe(p)
    except UserError:
        raise
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"policy checkpoint {p} ({fmt.name}): {one_line(exc)}") from None


def describe_checkpoint(path_or_preset: str | os.PathLike) -> dict[str, Any]:
    """Shapes and step counts of a checkpoint, read from its metadata only (cheap; used by `edgedp check`)."""
    spec = load_spec(path_or_preset)
    return {
        "horizon": spec.horizon,
        "n_obs_steps": spec.n_obs_steps,
        "n_action_steps": spec.n_action_steps,
        "image_keys": spec.image_keys,
        "state_keys": spec.state_keys,
        "action_dim": spec.action_dim,
        "image_shapes": {k: tuple(v) for k, v in spec.image_features.items()},
        "state_dims": {k: int(v[0]) for k, v in spec.state_features.items()},
        "action_period": spec.action_period,
        "num_inference_steps": spec.scheduler.get("num_inference_steps"),
        "source": spec.source,
    }


# ---- foreign checkpoint formats (models/checkpoint_import): LeRobot directories, original .ckpt files.
def _register_imports() -> None:
    from models.checkpoint_import import api as _imp

    def load(path: Path, device: str, k: "int | None", seed: int):
        return _imp.load_foreign(path, device=device, num_inference_steps=k, seed=seed)

    def load_with_scheduler(path: Path, device: str, k: "int | None", seed: int, scheduler: "str | None"):
        # The very path `edgedp import --scheduler --steps` takes (api.override_sampler).
        return _imp.load_foreign(path, device=device, num_inference_steps=k, seed=seed, scheduler=scheduler)

    register_format(CheckpointFormat("lerobot", _imp.is_lerobot, load, _imp.describe_foreign, load_with_scheduler))
    register_format(CheckpointFormat("diffusion_policy", _imp.is_original_ckpt, load, _imp.describe_foreign,
                                     load_with_scheduler))


_register_imports()
