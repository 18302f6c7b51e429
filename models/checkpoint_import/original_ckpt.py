"""Read an original Diffusion Policy workspace `.ckpt` (real-stanford/diffusion_policy) safely.

The file is unpickled by the restricted loader (no code runs), then the stored cfg decides
everything: the policy class, the obs keys and their order (`shape_meta.obs` insertion order, as
the robomimic/multi-image encoders iterate it), the U-Net options, the noise scheduler and its
kwargs, and whether to take `ema_model` (when `training.use_ema` is true).

Supported policies (with the conditional 1-D U-Net, global conditioning):
  DiffusionUnetHybridImagePolicy  robomimic ResNet-18 + spatial softmax + Linear + ReLU per camera
  DiffusionUnetImagePolicy        torchvision ResNet-18 + global average pool, shared or per camera
  DiffusionUnetLowdimPolicy       normalized obs flattened over the observation window
Everything else is refused by name rather than loaded approximately.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from models.encoder import ObservationEncoder
from models.unet1d import ConditionalUnet1D

from . import original_transformer as otr
from .description import ImportedPolicy, NormField
from .errors import CheckpointError, UnsupportedCheckpointError, one_line_errors, short_repr
from .fields import (MAX_DIM, MAX_IMAGE_SIDE, MAX_STEPS, MAX_TRAIN_TIMESTEPS, get_bool, get_float, get_int,
                     get_int_list, get_opt_int, get_str, int_list, section)
from . import original_rules
from .renaming import drop_aliases, remap, seq_trunk_to_native, strip_compiled, target_shapes
from .safe_unpickle import restricted_loads
from .torch_zip import LazyTensor, TorchZip, check_stored_bytes

HYBRID = "DiffusionUnetHybridImagePolicy"
IMAGE = "DiffusionUnetImagePolicy"
LOWDIM = "DiffusionUnetLowdimPolicy"
SUPPORTED = (HYBRID, IMAGE, LOWDIM) + otr.POLICIES
_DDPM = "DDPMScheduler"
_DDIM = "DDIMScheduler"
# diffusers 0.11.1 constructor defaults (the version the original code pins).
_SCHED_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                   "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
                   "set_alpha_to_one": True, "steps_offset": 0, "clip_sample_range": 1.0}


def _cls_name(target: Any) -> str:
    if not isinstance(target, str):
        return "?" if not target else f"<{type(target).__name__}>"
    return target.rsplit(".", 1)[-1][:80] or "?"


@one_line_errors()
def read_workspace_checkpoint(path: str | os.PathLike, weights: bool = True) -> ImportedPolicy:
    """Load and interpret a workspace checkpoint; one-line CheckpointError on any problem.

    With `weights=False` only the pickle and the normalizer statistics are read; the weights are
    meta tensors carrying their shapes (for `edgedp info` / `check`).
    """
    src = os.fspath(path)
    with TorchZip(src, lazy=True) as ck:
        return _read_open(ck, weights)


def _shape_only(ck: TorchZip, sd: dict) -> dict:
    """Meta tensors for the weights; real values for the few entries the description reads."""
    out = {}
    for k, v in sd.items():
        if isinstance(v, LazyTensor) and not (k.startswith("normalizer.") or k.endswith("pool.temperature")):
            out[k] = torch.empty(v.size, dtype=v.dtype, device="meta")
        else:
            out[k] = ck.materialize(v)
    return out


def _read_open(ck: TorchZip, weights: bool = True) -> ImportedPolicy:
    src, name, payload = ck.src, ck.name, ck.obj
    if not isinstance(payload, dict) or "cfg" not in payload or "state_dicts" not in payload:
        if isinstance(payload, dict) and payload and all(isinstance(v, LazyTensor) for v in payload.values()):
            raise UnsupportedCheckpointError(f"{name}: a bare state_dict without a config; the architecture cannot "
                                             "be known (use the workspace .ckpt the training run saved)")
        keys = [short_repr(k) for k in list(payload)[:5]] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{name}: not a Diffusion Policy workspace checkpoint (top level: {keys})")
    cfg, sds = payload["cfg"], payload["state_dicts"]
    if not isinstance(cfg, dict) or not isinstance(sds, dict):
        raise CheckpointError(f"{name}: cfg/state_dicts have the wrong type")
    pol = cfg.get("policy")
    if not isinstance(pol, dict):
        raise CheckpointError(f"{name}: cfg has no policy section")
    policy_cls = _cls_name(pol.get("_target_"))
    if policy_cls not in SUPPORTED:
        raise UnsupportedCheckpointError(f"{name}: unsupported policy {policy_cls} (supported: {', '.join(SUPPORTED)})")
    prov: dict[str, str] = {"policy": "cfg.policy._target_", "workspace": f"cfg._target_ = {_cls_name(cfg.get('_target_'))}"}
    use_ema = get_bool(section(cfg, "training", name, "cfg"), "use_ema", name, "cfg.training", False)
    which = "ema_model" if use_ema else "model"
    sd = sds.get(which)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{name}: cfg.training.use_ema={use_ema} but state_dicts['{which}'] is missing")
    prov["weights"] = f"state_dicts['{which}'] (cfg.training.use_ema={use_ema})"
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, (LazyTensor, torch.Tensor)):
            raise CheckpointError(f"{name}: state_dicts['{which}'] holds a non-tensor entry {short_repr(k)}")
    check_stored_bytes(sd.values(), f"{name}: state_dicts['{which}']")
    # Only the chosen weights are read from the archive (not the other copy, not the optimizer state).
    sd = {strip_compiled(k): v for k, v in (ck.materialize(dict(sd)) if weights else _shape_only(ck, sd)).items()}
    counters = pickled_counters(payload.get("pickles"), name)
    if counters.get("global_step") is not None or counters.get("epoch") is not None:
        prov["training progress"] = f"global_step {counters.get('global_step')}, epoch {counters.get('epoch')}"
    return _interpret(name, src, cfg, pol, policy_cls, sd, prov)


def pickled_counters(payload_pickles: Any, name: str) -> dict[str, Any]:
    """global_step / epoch from the nested `pickles` blobs (restricted too; they reference no globals)."""
    out = {}
    if isinstance(payload_pickles, dict):
        for k, blob in payload_pickles.items():
            if isinstance(blob, bytes) and len(blob) < 4096:
                try:
                    out[k] = restricted_loads(blob, f"{name}:pickles[{k}]")
                except CheckpointError:
                    out[k] = None
    return out


def _scheduler(pol: dict, name: str, prov: dict) -> dict:
    ns = section(pol, "noise_scheduler", name, "cfg.policy", required=True)
    cls = _cls_name(ns.get("_target_"))
    if cls not in (_DDPM, _DDIM):
        raise UnsupportedCheckpointError(f"{name}: unsupported noise scheduler {cls} (supported: {_DDPM}, {_DDIM})")
    if ns.get("trained_betas") is not None:
        raise UnsupportedCheckpointError(f"{name}: noise_scheduler.trained_betas is not supported")
    d, w = _SCHED_DEFAULTS, "cfg.policy.noise_scheduler"
    variance = get_str(ns, "variance_type", name, w, d["variance_type"])
    if cls == _DDPM and variance not in ("fixed_small", "fixed_small_log", "fixed_large"):
        raise UnsupportedCheckpointError(f"{name}: {w}.variance_type: {short_repr(variance)} not supported "
                                         "(supported: fixed_small, fixed_small_log, fixed_large)")
    n_train = get_int(ns, "num_train_timesteps", name, w, 1, MAX_TRAIN_TIMESTEPS, d["num_train_timesteps"])
    n_inf = get_opt_int(pol, "num_inference_steps", name, "cfg.policy", 1, n_train)
    sched = {
        "kind": "ddpm" if cls == _DDPM else "ddim",
        "num_train_timesteps": n_train,
        "beta_schedule": get_str(ns, "beta_schedule", name, w, d["beta_schedule"]),
        "beta_start": get_float(ns, "beta_start", name, w, d["beta_start"], 0.0, 1.0),
        "beta_end": get_float(ns, "beta_end", name, w, d["beta_end"], 0.0, 1.0),
        "prediction_type": get_str(ns, "prediction_type", name, w, d["prediction_type"]),
        "clip_sample": get_bool(ns, "clip_sample", name, w, d["clip_sample"]),
        "clip_sample_range": get_float(ns, "clip_sample_range", name, w, d["clip_sample_range"], 0.0, 1e6),
        "variance_type": variance,
        "set_alpha_to_one": get_bool(ns, "set_alpha_to_one", name, w, d["set_alpha_to_one"]),
        "steps_offset": get_int(ns, "steps_offset", name, w, 0, n_train, d["steps_offset"]),
        "num_inference_steps": n_inf if n_inf is not None else n_train,
        # diffusers 0.11.1: DDPM's step always looks back one training step.
        "ddpm_prev_rule": "diffusers_0_11",
    }
    prov["scheduler"] = f"cfg.policy.noise_scheduler ({cls}; diffusers 0.11.1 defaults for unset options)"
    prov["num_inference_steps"] = "cfg.policy.num_inference_steps" if n_inf is not None else "num_train_timesteps"
    return sched


def _normalizer(sd: dict, fields: list[str], name: str, image_fields: set[str]) -> dict[str, NormField]:
    out = {}
    for f in fields:
        scale = sd.get(f"normalizer.params_dict.{f}.scale")
        offset = sd.get(f"normalizer.params_dict.{f}.offset")
        if scale is None or offset is None:
            raise CheckpointError(f"{name}: normalizer.params_dict.{f}.scale/offset missing (set_normalizer was never "
                                  "called before saving?)")
        scale, offset = scale.float(), offset.float()
        if scale.shape != offset.shape or not torch.isfinite(scale).all() or (scale == 0).any():
            raise CheckpointError(f"{name}: normalizer field {f} has unusable scale/offset")
        out[f] = NormField("min_max", "original", {"scale": scale, "offset": offset},
                           f"state_dict normalizer.params_dict.{f}")
    return out


def _interpret(name: str, src: str, cfg: dict, pol: dict, policy_cls: str, sd: dict, prov: dict) -> ImportedPolicy:
    horizon = get_int(pol, "horizon", name, "cfg.policy", 1, MAX_STEPS)
    n_obs = get_int(pol, "n_obs_steps", name, "cfg.policy", 1, MAX_STEPS)
    n_act = get_int(pol, "n_action_steps", name, "cfg.policy", 1, MAX_STEPS)
    for k in ("horizon", "n_obs_steps", "n_action_steps"):
        prov[k] = f"cfg.policy.{k}"
    scheduler = _scheduler(pol, name, prov)
    original_rules.apply(name, pol, policy_cls, scheduler, prov)  # what the original does with this cfg
    if pol.get("obs_as_local_cond"):
        raise UnsupportedCheckpointError(f"{name}: obs_as_local_cond=True (local conditioning) is not supported")
    if not pol.get("obs_as_global_cond", True):
        raise UnsupportedCheckpointError(f"{name}: obs_as_global_cond=False (observation inpainting) is not supported")
    if policy_cls in otr.POLICIES:
        otr.check_policy_options(name, pol, policy_cls)
    if pol.get("pred_action_steps_only"):
        raise UnsupportedCheckpointError(f"{name}: pred_action_steps_only=True is not supported")
    action_start = n_obs - 1
    if policy_cls == LOWDIM and not pol.get("oa_step_convention", False):
        action_start = n_obs  # the lowdim policy's older convention
    prov["action_start"] = "n_obs_steps - 1" if action_start == n_obs - 1 else "n_obs_steps (oa_step_convention False)"

    dummies = [k for k in sd if k.endswith("_dummy_variable")]
    for k in dummies:
        if sd[k].numel() != 0:
            raise CheckpointError(f"{name}: {k} should be an empty placeholder")
    norm_keys = [k for k in sd if k.startswith("normalizer.")]
    model_sd = {k[len("model."):]: v.float() for k, v in sd.items() if k.startswith("model.") and k not in dummies}
    enc_sd = {k[len("obs_encoder."):]: v for k, v in sd.items() if k.startswith("obs_encoder.") and k not in dummies}
    stray = [k for k in sd if k not in dummies and k not in norm_keys and not k.startswith(("model.", "obs_encoder."))]
    if stray:
        raise CheckpointError(f"{name}: unexpected state_dict key {stray[0]}")
    norm_fields = sorted({k.split(".")[2] for k in norm_keys if k.count(".") >= 3})
    allowed_norm = {f"normalizer.params_dict.{f}.{s}" for f in norm_fields
                    for s in ("scale", "offset", "input_stats.min", "input_stats.max", "input_stats.mean", "input_stats.std")}
    odd = [k for k in norm_keys if k not in allowed_norm]
    if odd:
        raise CheckpointError(f"{name}: unexpected normalizer key {odd[0]}")

    if policy_cls in (LOWDIM, otr.LOWDIM):
        mcfg = section(pol, "model", name, "cfg.policy")
        if policy_cls == LOWDIM and _cls_name(mcfg.get("_target_")) != "ConditionalUnet1D":
            raise UnsupportedCheckpointError(f"{name}: unsupported denoiser {_cls_name(mcfg.get('_target_'))} "
                                             "(only ConditionalUnet1D)")
        if mcfg.get("local_cond_dim"):
            raise UnsupportedCheckpointError(f"{name}: local_cond_dim is not supported")
        obs_dim = get_int(pol, "obs_dim", name, "cfg.policy", 1, MAX_DIM)
        action_dim = get_int(pol, "action_dim", name, "cfg.policy", 1, MAX_DIM)
        image_shapes: dict[str, tuple[int, int, int]] = {}
        state_dims = {"obs": obs_dim}
        feature_order = ["obs"]
        image_kwargs: dict[str, Any] = {}
        shared = True
        ucfg = mcfg
        uwhere = "cfg.policy.model"
        if get_int(mcfg, "input_dim", name, uwhere, 1, MAX_DIM, action_dim) != action_dim:
            raise CheckpointError(f"{name}: cfg.policy.model.input_dim != action_dim")
        if enc_sd:
            raise CheckpointError(f"{name}: low-dim policy with obs_encoder weights")
        prov["state"] = "cfg.policy.obs_dim"
        prov["action"] = "cfg.policy.action_dim"
    else:
        shape_meta = pol.get("shape_meta") or cfg.get("shape_meta")
        if not isinstance(shape_meta, dict) or not isinstance(shape_meta.get("obs"), dict):
            raise CheckpointError(f"{name}: cfg.policy.shape_meta.obs is missing")
        image_shapes, state_dims = {}, {}
        for k, attr in shape_meta["obs"].items():
            if not isinstance(k, str) or not isinstance(attr, dict):
                raise CheckpointError(f"{name}: cfg.policy.shape_meta.obs.{short_repr(k)}: got {short_repr(attr)} "
                                      "(a mapping with type and shape)")
            typ = get_str(attr, "type", name, f"cfg.policy.shape_meta.obs.{k}", "low_dim")
            shp = tuple(get_int_list(attr, "shape", name, f"cfg.policy.shape_meta.obs.{k}", 1, MAX_IMAGE_SIDE * 16,
                                     max_len=4))
            if typ == "rgb":
                if len(shp) != 3 or shp[0] != 3:
                    raise UnsupportedCheckpointError(f"{name}: rgb obs {k} has shape {shp}; only (3, H, W) is supported")
                image_shapes[k] = shp  # type: ignore[assignment]
            elif typ == "low_dim":
                if len(shp) != 1:
                    raise UnsupportedCheckpointError(f"{name}: low_dim obs {k} has shape {shp}; only 1-D is supported")
                state_dims[k] = shp[0]
            else:
                raise UnsupportedCheckpointError(f"{name}: obs {k} of type {typ} is not supported (rgb, low_dim)")
        action_dim = get_int_list(section(shape_meta, "action", name, "cfg.policy.shape_meta", required=True),
                                  "shape", name, "cfg.policy.shape_meta.action", 1, MAX_DIM, max_len=1)[0]
        prov["images"] = prov["state"] = "cfg.policy.shape_meta.obs (insertion order)"
        prov["action"] = "cfg.policy.shape_meta.action"
        ucfg, uwhere = pol, "cfg.policy"
        if policy_cls in (HYBRID, otr.HYBRID):
            feature_order = list(shape_meta["obs"])
            shared = False
            image_kwargs, enc_state_src = _hybrid_encoder(name, pol, enc_sd, image_shapes, prov)
        else:
            image_kwargs, enc_state_src, shared, feature_order = _image_encoder(name, pol, enc_sd, image_shapes,
                                                                                state_dims, prov)
        enc_sd = enc_state_src
    unet_kwargs = dict(
        input_dim=action_dim,
        global_cond_dim=0,
        diffusion_step_embed_dim=get_int(ucfg, "diffusion_step_embed_dim", name, uwhere, 4, MAX_DIM, 256),
        down_dims=get_int_list(ucfg, "down_dims", name, uwhere, 1, MAX_DIM, [256, 512, 1024]),
        kernel_size=get_int(ucfg, "kernel_size", name, uwhere, 1, 63, 5),
        n_groups=get_int(ucfg, "n_groups", name, uwhere, 1, MAX_DIM, 8),
        cond_predict_scale=get_bool(ucfg, "cond_predict_scale", name, uwhere, policy_cls != LOWDIM),
    )
    prov["unet"] = f"{uwhere}: down_dims, kernel_size, n_groups, diffusion_step_embed_dim, cond_predict_scale"
    feat_dim = int(image_kwargs.get("feature_dim") or 0)
    per_frame = sum(state_dims.values()) + feat_dim * len(image_shapes)
    unet_kwargs["global_cond_dim"] = per_frame * n_obs
    if policy_cls == LOWDIM and mcfg.get("global_cond_dim") not in (None, unet_kwargs["global_cond_dim"]):
        raise CheckpointError(f"{name}: cfg.policy.model.global_cond_dim={short_repr(mcfg.get('global_cond_dim'))} but "
                              f"obs_dim*n_obs_steps={unet_kwargs['global_cond_dim']}")

    enc_kwargs = {k: v for k, v in image_kwargs.items() if k != "_rename"}
    rename = image_kwargs.get("_rename")
    enc_target = target_shapes(lambda: ObservationEncoder(image_shapes, state_dims, feature_order, shared=shared,
                                                          **enc_kwargs))
    encoder_state = remap(enc_sd, rename or (lambda k: None), enc_target, name, "encoder", "obs_encoder.")
    denoiser, denoiser_kwargs = "unet", {}
    if policy_cls in otr.POLICIES:
        denoiser = "transformer"
        denoiser_kwargs = otr.transformer_kwargs(name, pol, policy_cls, action_dim, per_frame, horizon, n_obs, prov)
        unet_kwargs = {"global_cond_dim": unet_kwargs["global_cond_dim"]}
        prov.pop("unet", None)
        unet_state = otr.transformer_state(name, model_sd, denoiser_kwargs, remap, target_shapes)
    else:
        unet_target = target_shapes(lambda: ConditionalUnet1D(**unet_kwargs))
        unet_state = remap(model_sd, lambda k: k, unet_target, name, "unet", "model.")

    fields = feature_order + ["action"]
    normalization = _normalizer(sd, fields, name, set(image_shapes))
    extra = sorted(set(norm_fields) - set(fields))
    notes = [f"normalizer field {f} unused by the policy" for f in extra]
    latency = get_int(cfg, "n_latency_steps", name, "cfg", 0, MAX_STEPS, 0)
    if latency:
        notes.append(f"cfg.n_latency_steps={latency}: the original trained on actions shifted by {latency} steps "
                     "and its eval skips that many; edgedp times chunks by its own measured latency")
    prov["normalization"] = "state_dict normalizer.params_dict.* (LinearNormalizer scale/offset)"
    return ImportedPolicy(
        source_format="diffusion_policy", source_path=src, architecture=policy_cls,
        horizon=horizon, n_obs_steps=n_obs, n_action_steps=n_act, action_start=action_start,
        action_dim=action_dim, action_key="action", image_shapes=image_shapes, state_dims=state_dims,
        feature_order=feature_order, shared_image_encoder=shared, image_kwargs=enc_kwargs,
        unet_kwargs=unet_kwargs, scheduler=scheduler, normalization=normalization,
        encoder_state=encoder_state, unet_state=unet_state, provenance=prov, notes=notes,
        denoiser=denoiser, denoiser_kwargs=denoiser_kwargs,
    )


def _crop(pol: dict, default: Any, name: str) -> tuple[int, int] | None:
    crop = pol.get("crop_shape", default)
    if crop is None:
        return None
    h, w = int_list(crop, name, "cfg.policy.crop_shape", 1, MAX_IMAGE_SIDE, 2, 2)
    return (h, w)


def _hybrid_encoder(name: str, pol: dict, enc_sd: dict, image_shapes: dict, prov: dict):
    """robomimic ObservationEncoder: obs_nets.<cam>.{backbone.nets.N, pool.*, nets.3}; nets.0/1 alias."""
    if not image_shapes:
        raise UnsupportedCheckpointError(f"{name}: hybrid image policy without rgb observations")
    crop = _crop(pol, (76, 76), name)
    group_norm = get_bool(pol, "obs_encoder_group_norm", name, "cfg.policy", False)
    if crop is not None and not pol.get("eval_fixed_crop", False):
        prov["crop"] = ("cfg.policy.crop_shape; eval_fixed_crop=False means the original crops at RANDOM at "
                        "inference too: we use the centre crop")
    else:
        prov["crop"] = "cfg.policy.crop_shape (centre crop at inference, eval_fixed_crop)"
    cams = list(image_shapes)

    def alias_of(k: str) -> str | None:
        for cam in cams:
            p = f"obs_nets.{cam}."
            if k.startswith(p + "nets.0."):
                return p + "backbone." + k[len(p + "nets.0."):]
            if k.startswith(p + "nets.1."):
                return p + "pool." + k[len(p + "nets.1."):]
        return None

    sd = drop_aliases(enc_sd, alias_of, name)
    first = f"obs_nets.{cams[0]}."
    if first + "backbone.nets.0.weight" not in sd or first + "nets.3.weight" not in sd:
        raise CheckpointError(f"{name}: obs_encoder lacks {first}backbone.nets.0.weight / nets.3.weight "
                              "(not a robomimic VisualCore encoder)")
    width = int(sd[first + "backbone.nets.0.weight"].shape[0])
    n_kp = int(sd[first + "pool.nets.weight"].shape[0]) if first + "pool.nets.weight" in sd else None
    feature_dim = int(sd[first + "nets.3.weight"].shape[0])
    temp = sd.get(first + "pool.temperature")
    prov["image encoder"] = ("robomimic VisualCore: ResNet18Conv -> SpatialSoftmax -> Linear -> ReLU; keypoints and "
                             "feature size from the obs_encoder weights; norm from cfg.policy.obs_encoder_group_norm")
    idx = {cam: i for i, cam in enumerate(cams)}

    def rename(k: str) -> str | None:
        if not k.startswith("obs_nets."):
            return None
        cam, _, rest = k[len("obs_nets."):].partition(".")
        for c in cams:  # camera names may contain dots
            if k.startswith(f"obs_nets.{c}."):
                cam, rest = c, k[len(f"obs_nets.{c}."):]
        if cam not in idx:
            return None
        i = idx[cam]
        if rest.startswith("backbone.nets."):
            t = seq_trunk_to_native(rest[len("backbone.nets."):])
            return None if t is None else f"image_encoders.{i}.backbone.{t}"
        if rest.startswith("pool."):
            return f"image_encoders.{i}.{rest}"
        if rest.startswith("nets.3."):
            return f"image_encoders.{i}.out.{rest[len('nets.3.'):]}"
        return None

    kwargs = dict(crop_shape=crop, resize_shape=None, norm="group" if group_norm else "batch", width=width,
                  pool="spatial_softmax", num_keypoints=n_kp, feature_dim=feature_dim, relu=True,
                  softmax_layout="robomimic", softmax_temperature=float(temp.reshape(-1)[0]) if temp is not None else 1.0,
                  _rename=rename)
    return kwargs, sd


def _image_encoder(name: str, pol: dict, enc_sd: dict, image_shapes: dict, state_dims: dict, prov: dict):
    """MultiImageObsEncoder: key_model_map.<cam|rgb>.<torchvision resnet names>; global average pool.

    Features per frame: cameras in sorted key order, then low-dim keys sorted (its __init__ sorts
    both); each camera's transform is resize -> crop (centre at eval) -> optional ImageNet normalize.
    """
    oe = section(pol, "obs_encoder", name, "cfg.policy")
    target = _cls_name(oe.get("_target_"))
    if target != "MultiImageObsEncoder":
        raise UnsupportedCheckpointError(f"{name}: unsupported obs encoder {target} (only MultiImageObsEncoder)")
    rgb = section(oe, "rgb_model", name, "cfg.policy.obs_encoder")
    weights = rgb.get("weights")
    if _cls_name(rgb.get("_target_")) != "get_resnet" or rgb.get("name") != "resnet18" \
            or (isinstance(weights, str) and weights.lower() == "r3m"):
        raise UnsupportedCheckpointError(f"{name}: unsupported rgb_model {_cls_name(rgb.get('_target_'))}"
                                         f"({short_repr(rgb.get('name'))}, weights={short_repr(weights)}); "
                                         "only get_resnet resnet18")
    if not image_shapes:
        raise UnsupportedCheckpointError(f"{name}: image policy without rgb observations")

    def one_shape(field: str) -> tuple[int, int] | None:
        v = oe.get(field)
        where = f"cfg.policy.obs_encoder.{field}"
        if isinstance(v, dict):
            vals = {tuple(int_list(v[k], name, f"{where}.{k}", 1, MAX_IMAGE_SIDE, 2, 2)) for k in image_shapes if k in v}
            if len(vals) != 1 or set(v) - set(image_shapes):
                raise UnsupportedCheckpointError(f"{name}: per-camera obs_encoder.{field} with different values "
                                                 f"{short_repr(v)} is not supported")
            v = list(vals.pop())
        if v is None:
            return None
        h, w = int_list(v, name, where, 1, MAX_IMAGE_SIDE, 2, 2)
        return (h, w)

    resize = one_shape("resize_shape")
    crop = one_shape("crop_shape")
    ow = "cfg.policy.obs_encoder"
    shared = get_bool(oe, "share_rgb_model", name, ow, False)
    group_norm = get_bool(oe, "use_group_norm", name, ow, False)
    imagenet = get_bool(oe, "imagenet_norm", name, ow, False)
    cams = sorted(image_shapes)
    ordered = {k: image_shapes[k] for k in cams}
    image_shapes.clear()
    image_shapes.update(ordered)
    feature_order = cams + sorted(state_dims)
    prov["images"] = prov["state"] = "cfg.policy.shape_meta.obs; MultiImageObsEncoder sorts rgb keys, then low_dim keys"
    prov["crop"] = ("cfg.policy.obs_encoder.resize_shape/crop_shape (centre crop at inference"
                    + ("; resize is antialiased bilinear as torchvision >= 0.17 Resize" if resize else "") + ")")
    prov["image encoder"] = ("MultiImageObsEncoder: torchvision ResNet-18, global average pool, no projection; "
                             "use_group_norm / share_rgb_model / imagenet_norm from cfg.policy.obs_encoder")
    models = ["rgb"] if shared else cams
    first = f"key_model_map.{models[0]}.conv1.weight"
    if first not in enc_sd:
        raise CheckpointError(f"{name}: obs_encoder.{first} missing (share_rgb_model={shared} in the cfg)")
    width = int(enc_sd[first].shape[0])
    idx = {m: i for i, m in enumerate(models)}

    def rename(k: str) -> str | None:
        if not k.startswith("key_model_map."):
            return None
        for m in models:  # camera names may contain dots
            p = f"key_model_map.{m}."
            if k.startswith(p):
                return f"image_encoders.{idx[m]}.backbone.{k[len(p):]}"
        return None

    sd = {k: v for k, v in enc_sd.items() if not k.startswith("key_transform_map.")}
    kwargs = dict(crop_shape=crop, resize_shape=resize, norm="group" if group_norm else "batch", width=width,
                  pool="avg", num_keypoints=32, feature_dim=8 * width, relu=False, project=False,
                  imagenet_norm=imagenet, softmax_layout="lerobot", _rename=rename)
    return kwargs, sd, shared, feature_order
