"""What the original implementation does with a stored cfg, where that differs from a plain reading.

Each rule below was found by running the original code (real-stanford/diffusion_policy at its last
commit, diffusers 0.11.1, robomimic 0.2.0) over a sweep of configurations and comparing actions
(tests/reference/make_original_sweep.py). A setting that changes the computation without
changing a weight shape would otherwise load silently and act differently, so every such setting
is either reproduced here or refused with ``<field>: <value> not supported (supported: ...)``.

``apply`` runs on the cfg's policy section right after the scheduler was read, before the encoder
and U-Net options are, and may fill in the class's own defaults or the scheduler's ``eta``.
"""
from __future__ import annotations

from typing import Any

from .errors import UnsupportedCheckpointError, short_repr

HYBRID = "DiffusionUnetHybridImagePolicy"
IMAGE = "DiffusionUnetImagePolicy"
LOWDIM = "DiffusionUnetLowdimPolicy"

# Constructor arguments of each policy class; any other cfg.policy key goes into its **kwargs and is
# passed to every noise_scheduler.step call.
_POLICY_ARGS = {
    HYBRID: {"shape_meta", "noise_scheduler", "horizon", "n_action_steps", "n_obs_steps", "num_inference_steps",
             "obs_as_global_cond", "crop_shape", "diffusion_step_embed_dim", "down_dims", "kernel_size", "n_groups",
             "cond_predict_scale", "obs_encoder_group_norm", "eval_fixed_crop"},
    IMAGE: {"shape_meta", "noise_scheduler", "obs_encoder", "horizon", "n_action_steps", "n_obs_steps",
            "num_inference_steps", "obs_as_global_cond", "diffusion_step_embed_dim", "down_dims", "kernel_size",
            "n_groups", "cond_predict_scale"},
    LOWDIM: {"model", "noise_scheduler", "horizon", "obs_dim", "action_dim", "n_action_steps", "n_obs_steps",
             "num_inference_steps", "obs_as_local_cond", "obs_as_global_cond", "pred_action_steps_only",
             "oa_step_convention"},
}
# The transformer policies (models/checkpoint_import/original_transformer.py reads their denoiser options).
T_HYBRID = "DiffusionTransformerHybridImagePolicy"
T_LOWDIM = "DiffusionTransformerLowdimPolicy"
_POLICY_ARGS[T_HYBRID] = {"shape_meta", "noise_scheduler", "horizon", "n_action_steps", "n_obs_steps",
                          "num_inference_steps", "crop_shape", "obs_encoder_group_norm", "eval_fixed_crop", "n_layer",
                          "n_cond_layers", "n_head", "n_emb", "p_drop_emb", "p_drop_attn", "causal_attn",
                          "time_as_cond", "obs_as_cond", "pred_action_steps_only"}
_POLICY_ARGS[T_LOWDIM] = {"model", "noise_scheduler", "horizon", "obs_dim", "action_dim", "n_action_steps",
                          "n_obs_steps", "num_inference_steps", "obs_as_cond", "pred_action_steps_only"}
# Constructor arguments of diffusers 0.11.1's schedulers; anything else makes the constructor raise,
# so a cfg holding it cannot have come from a run of the original code.
_SCHEDULER_ARGS = {
    "DDPMScheduler": {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                      "variance_type", "clip_sample", "prediction_type"},
    "DDIMScheduler": {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                      "clip_sample", "set_alpha_to_one", "steps_offset", "prediction_type"},
}
# ConditionalUnet1D's own defaults (the low-dim policy's cfg.policy.model may leave them out).
_UNET_DEFAULTS = {"diffusion_step_embed_dim": 256, "down_dims": [256, 512, 1024], "kernel_size": 3, "n_groups": 8,
                  "cond_predict_scale": False}
_MULTI_IMAGE_ARGS = {"_target_", "shape_meta", "rgb_model", "resize_shape", "crop_shape", "random_crop",
                     "use_group_norm", "share_rgb_model", "imagenet_norm"}


def _refuse(name: str, field: str, value: Any, supported: str, why: str = "") -> UnsupportedCheckpointError:
    tail = f": {why}" if why else ""
    return UnsupportedCheckpointError(f"{name}: {field}: {short_repr(value)} not supported (supported: {supported}){tail}")


def apply(name: str, pol: dict, policy_cls: str, scheduler: dict, prov: dict) -> None:
    """Check cfg.policy against what the original code does; fill defaults and ``scheduler['eta']``."""
    _step_kwargs(name, pol, policy_cls, scheduler, prov)
    _scheduler_args(name, pol, scheduler)
    if policy_cls == LOWDIM:
        if pol.get("obs_as_global_cond") is None:
            raise _refuse(name, "cfg.policy.obs_as_global_cond", "unset (the low-dim policy's default False: "
                          "observation inpainting)", "true")
        model = pol.get("model")
        if isinstance(model, dict):
            for key, value in _UNET_DEFAULTS.items():
                if model.get(key) is None:
                    model[key] = value
                    prov.setdefault("unet defaults", f"ConditionalUnet1D defaults for unset {key}")
    if policy_cls in (HYBRID, T_HYBRID) and pol.get("crop_shape", (76, 76)) is not None and not pol.get("eval_fixed_crop", False):
        raise _refuse(name, "cfg.policy.eval_fixed_crop", pol.get("eval_fixed_crop", False), "true",
                      "with it false robomimic's CropRandomizer takes a random crop at inference too")
    if policy_cls == IMAGE and isinstance(pol.get("obs_encoder"), dict):
        _multi_image_encoder(name, pol["obs_encoder"], prov)


def _step_kwargs(name: str, pol: dict, policy_cls: str, scheduler: dict, prov: dict) -> None:
    known = _POLICY_ARGS.get(policy_cls)
    if known is None:  # another denoiser family checks its own options
        return
    extra = {k: v for k, v in pol.items() if k not in known and k != "_target_"}
    for key, value in extra.items():
        if key == "eta" and scheduler["kind"] == "ddim":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
                raise _refuse(name, "cfg.policy.eta", value, "a number from 0 to 10")
            scheduler["eta"] = float(value)
            prov["eta"] = "cfg.policy.eta (passed to DDIMScheduler.step)"
        elif key == "use_clipped_model_output" and scheduler["kind"] == "ddim" and value is False:
            continue
        else:
            allowed = "eta, use_clipped_model_output=false with DDIMScheduler" if scheduler["kind"] == "ddim" else "none"
            raise _refuse(name, f"cfg.policy.{key}", value, allowed,
                          "extra policy keys are passed to noise_scheduler.step")


def _scheduler_args(name: str, pol: dict, scheduler: dict) -> None:
    ns = pol.get("noise_scheduler") or {}
    cls = "DDPMScheduler" if scheduler["kind"] == "ddpm" else "DDIMScheduler"
    for key in ns:
        if key != "_target_" and key not in _SCHEDULER_ARGS[cls]:
            raise _refuse(name, f"cfg.policy.noise_scheduler.{key}", ns[key], ", ".join(sorted(_SCHEDULER_ARGS[cls])),
                          f"not an argument of diffusers 0.11.1 {cls}")
    # diffusers 0.11.1 has no clip_sample_range (it always clips to [-1, 1]) and its DDPM no steps_offset.
    scheduler["clip_sample_range"] = 1.0
    if scheduler["kind"] == "ddpm":
        scheduler["steps_offset"] = 0
    if scheduler["kind"] == "ddim" and scheduler["prediction_type"] == "sample":
        raise _refuse(name, "cfg.policy.noise_scheduler.prediction_type", "sample", "epsilon, v_prediction",
                      "diffusers 0.11.1's DDIMScheduler steps along the model output as if it were the noise")


def _multi_image_encoder(name: str, oe: dict, prov: dict) -> None:
    for key in oe:
        if key not in _MULTI_IMAGE_ARGS:
            raise _refuse(name, f"cfg.policy.obs_encoder.{key}", oe[key], ", ".join(sorted(_MULTI_IMAGE_ARGS - {"_target_"})))
    rgb = oe.get("rgb_model")
    if isinstance(rgb, dict):
        for key in rgb:
            if key not in ("_target_", "name", "weights"):
                raise _refuse(name, f"cfg.policy.obs_encoder.rgb_model.{key}", rgb[key], "name, weights")
    if oe.get("share_rgb_model") is True and oe.get("use_group_norm") is True:
        # The BatchNorm -> GroupNorm swap runs on the per-camera copies only; the shared model keeps
        # its BatchNorm layers (and running statistics).
        oe["use_group_norm"] = False
        prov["norm note"] = ("cfg.policy.obs_encoder.use_group_norm=True is ignored by the original with "
                             "share_rgb_model=True: the shared ResNet keeps BatchNorm")
    if oe.get("crop_shape") is not None and oe.get("random_crop", True) is False:
        # MultiImageObsEncoder builds the CenterCrop for random_crop=False into a variable it then
        # overwrites: no crop is applied at all, in training or at inference.
        oe["crop_shape"] = None
        prov["crop note"] = "cfg.policy.obs_encoder.random_crop=False: the original applies no crop (its CenterCrop is unused)"
