"""Turn an `ImportedPolicy` into the native PolicySpec and a DiffusionPolicy with its weights.

The native state dict is `normalizers.fields.<key>.*`, `obs_encoder.*` and `unet.*`; the
importers already produced the last two under native names, so this module only assembles the
spec, copies normalization statistics, and loads everything with `strict=True`.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from models.normalizer import NormalizerSet
from models.spec import EncoderSpec, NormalizationSpec, PolicySpec, SpecError, TransformerSpec, UnetSpec

from .description import ImportedPolicy
from .errors import CheckpointError, UnsupportedCheckpointError

_PREV_RULE = {"current": "schedule", "diffusers_0_11": "t_minus_one"}


def scheduler_dict(imp: ImportedPolicy) -> dict[str, Any]:
    s = imp.scheduler
    return {
        "kind": s["kind"], "num_train_timesteps": s["num_train_timesteps"], "beta_start": s["beta_start"],
        "beta_end": s["beta_end"], "beta_schedule": s["beta_schedule"], "clip_sample": s["clip_sample"],
        "clip_sample_range": s["clip_sample_range"], "prediction_type": s["prediction_type"],
        "set_alpha_to_one": s["set_alpha_to_one"], "steps_offset": s["steps_offset"],
        "variance_type": s["variance_type"], "num_inference_steps": s["num_inference_steps"],
        "ddpm_prev_rule": _PREV_RULE[s["ddpm_prev_rule"]],
        "eta": float(s.get("eta", 0.0)) if s["kind"] == "ddim" else 0.0,
    }


def to_spec(imp: ImportedPolicy) -> PolicySpec:
    name = os.path.basename(imp.source_path.rstrip("/"))
    if imp.action_start != imp.n_obs_steps - 1:
        raise UnsupportedCheckpointError(
            f"{name}: the policy executes actions from horizon index {imp.action_start}; edgedp executes from "
            f"n_obs_steps-1 = {imp.n_obs_steps - 1} (oa_step_convention=False is not supported)")
    conventions = {nf.convention for nf in imp.normalization.values()}
    if len(conventions) != 1:
        raise CheckpointError(f"{name}: mixed normalization conventions {sorted(conventions)}")
    ik = imp.image_kwargs
    enc = EncoderSpec(shared=imp.shared_image_encoder)
    if imp.image_shapes:
        if ik.get("num_keypoints") is None and ik.get("pool") == "spatial_softmax":
            raise UnsupportedCheckpointError(f"{name}: spatial softmax without a keypoint projection is not supported")
        enc = EncoderSpec(
            backbone="resnet18", width=int(ik["width"]), norm=ik["norm"], pool=ik["pool"],
            num_keypoints=int(ik.get("num_keypoints") or 32), feature_dim=int(ik["feature_dim"]),
            relu=bool(ik.get("relu", True)), shared=imp.shared_image_encoder,
            crop_shape=list(ik["crop_shape"]) if ik.get("crop_shape") else None,
            resize_shape=list(ik["resize_shape"]) if ik.get("resize_shape") else None,
            softmax_layout=ik.get("softmax_layout", "lerobot"),
            softmax_temperature=float(ik.get("softmax_temperature", 1.0)),
            project=bool(ik.get("project", True)), imagenet_norm=bool(ik.get("imagenet_norm", False)),
        )
    u = imp.unet_kwargs
    if imp.denoiser == "transformer":
        t = imp.denoiser_kwargs
        denoiser = dict(denoiser="transformer", transformer=TransformerSpec(**{
            k: t[k] for k in ("n_layer", "n_head", "n_emb", "n_cond_layers", "causal_attn", "time_as_cond",
                              "p_drop_emb", "p_drop_attn")}))
    else:
        denoiser = dict(unet=UnetSpec(down_dims=list(u["down_dims"]), kernel_size=u["kernel_size"],
                                      n_groups=u["n_groups"], diffusion_step_embed_dim=u["diffusion_step_embed_dim"],
                                      cond_predict_scale=u["cond_predict_scale"]))
    spec = PolicySpec(
        action_dim=imp.action_dim,
        image_features={k: list(s) for k, s in imp.image_shapes.items()},
        state_features={k: [int(d)] for k, d in imp.state_dims.items()},
        n_obs_steps=imp.n_obs_steps, horizon=imp.horizon, n_action_steps=imp.n_action_steps,
        feature_order=list(imp.feature_order), action_key=imp.action_key, encoder=enc,
        **denoiser,
        scheduler=scheduler_dict(imp),
        normalization=NormalizationSpec(convention=conventions.pop(),
                                        modes={k: nf.mode for k, nf in imp.normalization.items()}),
        name=name,
        source=f"{imp.source_format}:{imp.source_path}",
        provenance={"architecture": imp.architecture, **imp.provenance,
                    **({"notes": list(imp.notes)} if imp.notes else {})},
    )
    try:
        return spec.validate()
    except SpecError as err:
        raise UnsupportedCheckpointError(f"{name}: {err}") from None


def native_state(imp: ImportedPolicy) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for key, nf in imp.normalization.items():
        for stat, t in nf.stats.items():
            sd[f"normalizers.fields.{NormalizerSet.escape(key)}.{stat}"] = t
    sd.update({f"obs_encoder.{k}": v for k, v in imp.encoder_state.items()})
    prefix = "transformer." if imp.denoiser == "transformer" else "unet."
    sd.update({prefix + k: v for k, v in imp.unet_state.items()})
    return sd


def build_policy(imp: ImportedPolicy, num_inference_steps: int | None = None, device: str | torch.device = "cpu",
                 seed: int = 0):
    """A ready DiffusionPolicy (eval mode) from an import; K may be overridden (DDIM: any K)."""
    from models.policy import DiffusionPolicy

    spec = to_spec(imp)
    name = os.path.basename(imp.source_path.rstrip("/"))
    try:
        # Built for real (not on the meta device): derived, non-saved buffers must hold their values.
        policy = DiffusionPolicy(spec, num_inference_steps=num_inference_steps, seed=seed)
    except ValueError as err:
        raise UnsupportedCheckpointError(f"{name}: {err}") from None
    want = policy.state_dict()
    sd = native_state(imp)
    if any(t.is_meta for t in sd.values()):
        raise CheckpointError(f"{name}: read for description only (weights=False); cannot build a policy from it")
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing or extra:
        bad = missing[0] if missing else extra[0]
        raise CheckpointError(f"{name}: native tensor {bad} {'missing' if missing else 'unexpected'} after import")
    for k, ref in want.items():
        if tuple(sd[k].shape) != tuple(ref.shape):
            if sd[k].numel() == ref.numel() and k.startswith("normalizers."):
                sd[k] = sd[k].reshape(ref.shape)
            else:
                raise CheckpointError(f"{name}: {k} has shape {tuple(sd[k].shape)}, native needs {tuple(ref.shape)}")
    try:
        return policy.adopt_weights(sd, device, num_inference_steps)
    except ValueError as err:
        raise CheckpointError(f"{name}: K={num_inference_steps}: {err}") from None
