"""Entry points used by the CLI and by edgedp.policy_loading: detect, read, build, import, summarize.

Detection is cheap and never raises on unrelated paths: a LeRobot model is a directory with
config.json + model.safetensors (or a folder holding `pretrained_model/`); an original
checkpoint is a regular file that starts like a torch save (zip or legacy pickle).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .convert import build_policy, to_spec
from .description import ImportedPolicy
from .errors import CheckpointError, UnsupportedCheckpointError
from .lerobot import is_lerobot_dir, read_lerobot
from .original_ckpt import read_workspace_checkpoint

LEROBOT = "lerobot"
ORIGINAL = "diffusion_policy"


def is_lerobot(path: str | os.PathLike) -> bool:
    p = Path(path)
    return is_lerobot_dir(p) or is_lerobot_dir(p / "pretrained_model")


def is_original_ckpt(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or p.suffix in (".ckpt", ".pt", ".pth")


def detect(path: str | os.PathLike) -> str | None:
    if is_lerobot(path):
        return LEROBOT
    if is_original_ckpt(path):
        return ORIGINAL
    return None


def read_foreign(path: str | os.PathLike, scheduler: str | None = None,
                 num_inference_steps: int | None = None, weights: bool = True) -> ImportedPolicy:
    """Read a LeRobot dir or original .ckpt; optionally switch the sampler (e.g. DDPM-trained -> DDIM, K).

    `weights=False` reads only what a description needs (headers, config, statistics)."""
    kind = detect(path)
    if kind == LEROBOT:
        imp = read_lerobot(path, weights=weights)
    elif kind == ORIGINAL:
        imp = read_workspace_checkpoint(path, weights=weights)
    else:
        raise CheckpointError(f"{path}: neither a LeRobot pretrained_model directory nor a Diffusion Policy .ckpt")
    return override_sampler(imp, scheduler, num_inference_steps)


def override_sampler(imp: ImportedPolicy, scheduler: str | None, num_inference_steps: int | None) -> ImportedPolicy:
    """DDIM needs no retraining: a DDPM-trained policy may sample with DDIM and any K."""
    if scheduler is not None:
        s = scheduler.lower()
        if s not in ("ddpm", "ddim"):
            raise CheckpointError(f"scheduler {scheduler!r}: allowed ddpm, ddim")
        if s != imp.scheduler["kind"]:
            imp.provenance["scheduler"] = f"overridden to {s.upper()} at import (trained with {imp.scheduler['kind'].upper()})"
        imp.scheduler["kind"] = s
    if num_inference_steps is not None:
        k = int(num_inference_steps)
        if not 1 <= k <= imp.scheduler["num_train_timesteps"]:
            raise CheckpointError(f"K={k}: must be in 1..num_train_timesteps={imp.scheduler['num_train_timesteps']}")
        imp.scheduler["num_inference_steps"] = k
        imp.provenance["num_inference_steps"] = "overridden at import"
    return imp


def load_foreign(path: str | os.PathLike, device: str | torch.device = "cpu", num_inference_steps: int | None = None,
                 seed: int = 0, scheduler: str | None = None):
    imp = read_foreign(path, scheduler=scheduler, num_inference_steps=num_inference_steps)
    return build_policy(imp, num_inference_steps=None, device=device, seed=seed)


def describe_foreign(path: str | os.PathLike):
    """The PolicySpec an import would produce (reads only the weights' shapes to decide widths)."""
    return to_spec(read_foreign(path, weights=False))


def import_checkpoint(src: str | os.PathLike, out: str | os.PathLike, scheduler: str | None = None,
                      num_inference_steps: int | None = None, overwrite: bool = False) -> Path:
    """Read `src`, build the policy and write it as a native checkpoint directory atomically."""
    from models.native import is_native_dir, save_native

    dest = Path(out)
    if dest.exists() and not overwrite and (not dest.is_dir() or any(dest.iterdir())):
        raise CheckpointError(f"{dest}: already exists (pass --force to replace a native checkpoint)")
    if dest.exists() and dest.is_dir() and any(dest.iterdir()) and not is_native_dir(dest):
        raise CheckpointError(f"{dest}: exists and is not a native checkpoint; refusing to replace it")
    imp = read_foreign(src, scheduler=scheduler, num_inference_steps=num_inference_steps)
    policy = build_policy(imp)
    return save_native(policy, dest, provenance={"imported_from": f"{imp.source_format}:{imp.source_path}"},
                       overwrite=True)


def summary_rows(imp: ImportedPolicy) -> list[tuple[str, str, str]]:
    """(item, value, where it came from) rows for `edgedp info`."""
    p = imp.provenance
    s = imp.scheduler
    counts = imp.param_counts()
    rows = [
        ("format", imp.source_format, imp.source_path),
        ("architecture", imp.architecture, p.get("policy", p.get("workspace", "config"))),
        ("parameters: denoiser", f"{counts['denoiser']:,}", "weights"),
        ("parameters: encoder", f"{counts['encoder']:,}", "weights"),
    ]
    for k, shp in imp.image_shapes.items():
        rows.append((f"camera {k}", "x".join(map(str, shp)), p.get("images", "")))
    if imp.image_shapes:
        ik = imp.image_kwargs
        pool = (f"spatial softmax {ik.get('num_keypoints')} kp" if ik["pool"] == "spatial_softmax" else "global avg pool")
        proj = f" -> Linear {ik['feature_dim']}" if ik.get("project", True) else f" ({ik['feature_dim']} features)"
        enc = (f"resnet18 {ik['norm']}norm width {ik['width']}, {pool}{proj}, "
               f"{'shared' if imp.shared_image_encoder else 'one per camera'}"
               + (", ImageNet re-normalization" if ik.get("imagenet_norm") else ""))
        rows.append(("image encoder", enc, p.get("image encoder", "")))
        rows.append(("resize / crop", f"{_hw(ik.get('resize_shape'))} / {_hw(ik.get('crop_shape'))} (centre)",
                     p.get("crop", p.get("crop_shape", ""))))
    for k, d in imp.state_dims.items():
        rows.append((f"state {k}", str(d), p.get("state", "")))
    rows.append((f"action {imp.action_key}", str(imp.action_dim), p.get("action", "")))
    rows.append(("per-frame order", ", ".join(imp.feature_order), p.get("images", p.get("state", ""))))
    rows.append(("horizon / n_obs_steps / n_action_steps", f"{imp.horizon} / {imp.n_obs_steps} / {imp.n_action_steps}",
                 p.get("horizon", "")))
    u = imp.unet_kwargs
    if imp.denoiser == "transformer":
        from .original_transformer import summary
        rows.append(("transformer", summary(imp.denoiser_kwargs), p.get("transformer", "")))
    else:
        rows.append(("U-Net", f"down_dims {list(u['down_dims'])}, kernel {u['kernel_size']}, groups {u['n_groups']}, "
                              f"step emb {u['diffusion_step_embed_dim']}, FiLM scale {u['cond_predict_scale']}, "
                              f"cond {u['global_cond_dim']}", p.get("unet", "")))
    rows.append(("scheduler", f"{s['kind'].upper()} {s['beta_schedule']} T={s['num_train_timesteps']} "
                              f"{s['prediction_type']} clip={s['clip_sample']}", p.get("scheduler", "")))
    rows.append(("K (inference steps)", str(s["num_inference_steps"]), p.get("num_inference_steps", "")))
    for k, nf in imp.normalization.items():
        what = "scale/offset (LinearNormalizer)" if nf.convention == "original" else nf.mode.upper()
        rows.append((f"normalize {k}", what, nf.source))
    if "weights" in p:
        rows.append(("weights", p["weights"], p.get("training progress", "")))
    for n in imp.notes:
        rows.append(("note", n, ""))
    return rows


def _hw(v: Any) -> str:
    return "none" if not v else f"{v[0]}x{v[1]}"


__all__ = ["detect", "read_foreign", "load_foreign", "describe_foreign", "import_checkpoint", "summary_rows",
           "is_lerobot", "is_original_ckpt", "override_sampler", "UnsupportedCheckpointError", "CheckpointError"]
