"""Read a LeRobot Diffusion Policy `pretrained_model/` directory into an `ImportedPolicy`.

Layouts handled:
  * config.json with `input_features`/`output_features`/`normalization_mapping` (0.1 onwards) or
    the older `input_shapes`/`output_shapes`/`*_normalization_modes`;
  * normalization statistics from processor files (0.4: `policy_preprocessor*.json` pointing at
    `*_normalizer_processor.safetensors`, and the postprocessor's unnormalizer for the action) or
    from the in-model `normalize_inputs.*` / `normalize_targets.*` / `unnormalize_outputs.*`
    buffers of older versions;
  * a shared RGB encoder (`rgb_encoder.*`) or one per camera (`rgb_encoder.<i>.*`);
  * keys carrying `_orig_mod.` from compiled training.
LeRobot's encoder resizes (optional) then centre-crops at inference; the per-frame conditioning
is [state, camera features in input_features order, environment state].
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from models.encoder import ObservationEncoder
from models.unet1d import ConditionalUnet1D

from .description import ImportedPolicy, NormField
from .errors import CheckpointError, UnsupportedCheckpointError, one_line_errors, short_repr
from .fields import (MAX_DIM, MAX_IMAGE_SIDE, MAX_STEPS, MAX_TRAIN_TIMESTEPS, get_bool, get_float, get_int,
                     get_int_list, get_opt_int, get_str, section)
from .renaming import lerobot_unet_to_native, remap, seq_trunk_to_native, strip_compiled, target_shapes

STATE_KEY = "observation.state"
ENV_KEY = "observation.environment_state"
_MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity",
          "mean_std": "mean_std", "min_max": "min_max", "identity": "identity"}


def is_lerobot_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file()


def resolve_dir(path: str | os.PathLike) -> Path:
    """Accept the `pretrained_model/` folder itself or a checkpoint folder that contains one."""
    p = Path(path)
    if is_lerobot_dir(p):
        return p
    if is_lerobot_dir(p / "pretrained_model"):
        return p / "pretrained_model"
    raise CheckpointError(f"{p}: not a LeRobot model directory (needs config.json and model.safetensors)")


# A LeRobot config.json or processor file is a few KiB and nests < 6 levels.
_MAX_JSON_BYTES = 4 * 1024 * 1024
_MAX_JSON_DEPTH = 32
_MAX_INT_DIGITS = 19


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text.lstrip('-'))} digits (a 64-bit integer)")
    return int(text)


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number (JSON numbers must be finite)")


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {short_repr(k)}")
        out[k] = v
    return out


def _json_depth(data: Any) -> int:
    """Deepest nesting, iteratively (the data is a tree: JSON cannot share)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= _MAX_JSON_DEPTH:
                todo.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _read_json(path: Path) -> dict:
    """A JSON object from a small file: no NaN/Infinity, no 5000-digit integers, no duplicate keys,
    no deep nesting, no oversized or non-UTF-8 file; each is one CheckpointError naming the file."""
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: larger than {_MAX_JSON_BYTES // (1024 * 1024)} MiB (not a config file)")
        data = json.loads(path.read_bytes().decode("utf-8"), parse_int=_json_int, parse_constant=_json_constant,
                          object_pairs_hook=_json_object)
    except RecursionError:
        raise CheckpointError(f"{path}: nests more than {_MAX_JSON_DEPTH} levels deep") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        if isinstance(err, CheckpointError):
            raise
        text = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: unreadable JSON ({text})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if _json_depth(data) > _MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: nests more than {_MAX_JSON_DEPTH} levels deep")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: damaged safetensors file ({err})") from None


def _shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 4 \
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= MAX_DIM for x in v):
        raise CheckpointError(f"{where}: bad shape {short_repr(v)} (1 to 4 integers from 1 to {MAX_DIM})")
    return tuple(v)


def _features(cfg: dict, cfg_path: Path) -> tuple[dict[str, dict], dict[str, dict], str]:
    """(input features, output features) as key -> {type, shape}, in file order, plus provenance."""
    src = str(cfg_path)
    if "input_features" in cfg:
        ins = section(cfg, "input_features", src, "")
        outs = section(cfg, "output_features", src, "")
        where = "config.json:input_features"
    elif "input_shapes" in cfg:  # pre-0.1 layout: type from the key name
        ins = {}
        for k, shp in section(cfg, "input_shapes", src, "").items():
            t = "VISUAL" if k.startswith("observation.image") else ("ENV" if k == ENV_KEY else "STATE")
            ins[k] = {"type": t, "shape": shp}
        outs = {k: {"type": "ACTION", "shape": shp} for k, shp in section(cfg, "output_shapes", src, "").items()}
        where = "config.json:input_shapes"
    else:
        raise CheckpointError(f"{cfg_path}: has neither input_features nor input_shapes")
    if not isinstance(ins, dict) or not isinstance(outs, dict):
        raise CheckpointError(f"{cfg_path}: input/output features must be objects")
    for d in (ins, outs):
        for k, v in d.items():
            if not isinstance(v, dict) or "shape" not in v:
                raise CheckpointError(f"{cfg_path}: feature {k} lacks a shape")
            v["shape"] = _shape(v["shape"], f"{cfg_path}: feature {k}")
            v["type"] = get_str(v, "type", src, f"features.{k}", "STATE").upper()
    return ins, outs, where


def _norm_modes(cfg: dict, ins: dict, outs: dict) -> tuple[dict[str, str], str]:
    modes: dict[str, str] = {}
    if "normalization_mapping" in cfg:
        mapping = section(cfg, "normalization_mapping", "config.json", "")
        for k, v in list(ins.items()) + list(outs.items()):
            raw = mapping.get(v["type"], "IDENTITY")
            if not isinstance(raw, str) or raw not in _MODES:
                raise UnsupportedCheckpointError(f"config.json: normalization mode {short_repr(raw)} for {k} is not "
                                                 "supported (supported: MEAN_STD, MIN_MAX, IDENTITY)")
            modes[k] = _MODES[raw]
        return modes, "config.json:normalization_mapping"
    for src in ("input_normalization_modes", "output_normalization_modes"):
        for k, raw in section(cfg, src, "config.json", "").items():
            if not isinstance(raw, str) or raw not in _MODES:
                raise UnsupportedCheckpointError(f"config.json: normalization mode {short_repr(raw)} for {k} is not "
                                                 "supported")
            modes[k] = _MODES[raw]
    for k in list(ins) + list(outs):
        modes.setdefault(k, "identity")
    return modes, "config.json:*_normalization_modes"


def _processor_stats(d: Path, name: str, step_name: str) -> tuple[dict[str, torch.Tensor], dict, str] | None:
    """Stats and step config of the (un)normalizer step of a processor pipeline, if the files exist."""
    jpath = d / f"{name}.json"
    if not jpath.is_file():
        cands = sorted(d.glob(f"{name}*.json"))
        if not cands:
            return None
        jpath = cands[0]
    pipe = _read_json(jpath)
    steps = pipe.get("steps") or []
    if not isinstance(steps, list):
        raise CheckpointError(f"{jpath}: steps: got {short_repr(steps)} (a list)")
    for step in steps:
        if isinstance(step, dict) and step.get("registry_name") == step_name:
            state_file = step.get("state_file")
            if not isinstance(state_file, str) or "/" in state_file or "\\" in state_file:
                raise CheckpointError(f"{jpath}: {step_name} has no usable state_file")
            spath = d / state_file
            if not spath.is_file():
                raise CheckpointError(f"{jpath}: {step_name} points at missing {state_file}")
            return _load_safetensors(spath), section(step, "config", str(jpath), f"steps.{step_name}"), state_file
    return None


def _buffer_stats(sd: dict[str, torch.Tensor], keys: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Older LeRobot: `normalize_inputs.buffer_observation_state.min` etc. inside model.safetensors."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for prefix in ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."):
        for k in keys:
            buf = "buffer_" + k.replace(".", "_")
            for stat in ("min", "max", "mean", "std"):
                t = sd.get(f"{prefix}{buf}.{stat}")
                if t is not None:
                    # unnormalize_outputs wins for the action (it is what turns samples into commands)
                    if prefix == "unnormalize_outputs." or stat not in found.get(k, {}):
                        found.setdefault(k, {})[stat] = t
    return found


def _norm_field(key: str, mode: str, stats: dict[str, torch.Tensor], where: str, shape: tuple[int, ...]) -> NormField:
    if mode == "identity":
        return NormField("identity", "lerobot", {}, where)
    need = ("min", "max") if mode == "min_max" else ("mean", "std")
    got = {}
    for s in need:
        t = stats.get(s)
        if t is None:
            raise CheckpointError(f"{where}: no {s} statistic for {key} (needed by {mode.upper()})")
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: {key}.{s} is not finite (statistics were never set)")
        got[s] = t
    return NormField(mode, "lerobot", got, where)


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _safetensors_shapes(path: Path) -> dict[str, torch.Tensor]:
    """Header only: meta tensors with each entry's shape and dtype, statistics buffers read for real."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), "pt") as f:
            for k in f.keys():
                if k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")):
                    out[k] = f.get_tensor(k)
                    continue
                sl = f.get_slice(k)
                dt = _ST_DTYPES.get(sl.get_dtype())
                if dt is None:
                    raise CheckpointError(f"{path}: {k} has unsupported dtype {sl.get_dtype()}")
                out[k] = torch.empty(tuple(sl.get_shape()), dtype=dt, device="meta")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: damaged safetensors file ({err})") from None
    return out


@one_line_errors()
def read_lerobot(path: str | os.PathLike, weights: bool = True) -> ImportedPolicy:
    """Interpret a LeRobot directory; with `weights=False` only the safetensors header is read
    (shapes decide widths), which is what `edgedp info` / `check` need."""
    d = resolve_dir(path)
    cfg_path = d / "config.json"
    cfg = _read_json(cfg_path)
    ptype = cfg.get("type", "diffusion")
    if ptype != "diffusion":
        raise UnsupportedCheckpointError(f"{cfg_path}: LeRobot policy type {short_repr(ptype)} is not supported (only 'diffusion')")
    prov: dict[str, str] = {"policy": f"config.json:type = {ptype}"}
    ins, outs, feat_where = _features(cfg, cfg_path)
    image_keys = [k for k, v in ins.items() if v["type"] == "VISUAL"]
    if STATE_KEY not in ins:
        raise UnsupportedCheckpointError(f"{cfg_path}: no {STATE_KEY} input; LeRobot's diffusion policy requires it")
    other = [k for k, v in ins.items() if k not in image_keys and k not in (STATE_KEY, ENV_KEY)]
    if other:
        raise UnsupportedCheckpointError(f"{cfg_path}: input feature {other[0]} (type {ins[other[0]]['type']}) "
                                         "is not used by LeRobot's diffusion policy")
    if "action" not in outs:
        raise CheckpointError(f"{cfg_path}: no 'action' output feature")
    state_dims = {STATE_KEY: int(ins[STATE_KEY]["shape"][0])}
    if ENV_KEY in ins:
        state_dims[ENV_KEY] = int(ins[ENV_KEY]["shape"][0])
    image_shapes = {k: tuple(int(x) for x in ins[k]["shape"]) for k in image_keys}
    for k, s in image_shapes.items():
        if len(s) != 3 or s[0] != 3:
            raise UnsupportedCheckpointError(f"{cfg_path}: camera {k} has shape {s}; only 3-channel images are supported")
    if len({s for s in image_shapes.values()}) > 1:
        raise CheckpointError(f"{cfg_path}: LeRobot requires all cameras to share one shape, got {image_shapes}")
    feature_order = [STATE_KEY] + image_keys + ([ENV_KEY] if ENV_KEY in ins else [])
    action_dim = int(outs["action"]["shape"][0])
    for k in ("state", "images", "action"):
        prov[k] = feat_where

    def get(name: str, default: Any = None, required: bool = False) -> Any:
        if name in cfg:
            prov[name] = f"config.json:{name}"
            return cfg[name]
        if required:
            raise CheckpointError(f"{cfg_path}: missing {name}")
        prov[name] = "LeRobot default"
        return default

    src = str(cfg_path)

    def integer(name: str, lo: int, hi: int, *default: int) -> int:
        get(name, *default, required=not default)
        return get_int(cfg, name, src, "", lo, hi, *default)

    def number(name: str, default: float, lo: float, hi: float) -> float:
        get(name, default)
        return get_float(cfg, name, src, "", default, lo, hi)

    def flag(name: str, default: bool) -> bool:
        get(name, default)
        return get_bool(cfg, name, src, "", default)

    def word(name: str, default: str) -> str:
        get(name, default)
        return get_str(cfg, name, src, "", default)

    n_obs = integer("n_obs_steps", 1, MAX_STEPS)
    horizon = integer("horizon", 1, MAX_STEPS)
    n_act = integer("n_action_steps", 1, MAX_STEPS)
    if n_obs <= horizon < n_obs - 1 + n_act:
        # LeRobot slices actions[:, n_obs-1 : n_obs-1+n_action_steps]; past the horizon the slice just
        # ends (0.6's default n_action_steps 32 with a horizon of 16 executes 15 actions).
        prov["n_action_steps"] = (f"config.json:n_action_steps = {n_act}, cut to horizon - n_obs_steps + 1 = "
                                  f"{horizon - n_obs + 1} as LeRobot's slice does")
        n_act = horizon - n_obs + 1
    backbone = get("vision_backbone", "resnet18")
    if image_keys and backbone != "resnet18":
        raise UnsupportedCheckpointError(f"{cfg_path}: vision_backbone {short_repr(backbone)} is not supported "
                                         "(only resnet18)")
    resize = get("resize_shape", None)
    crop_ratio = number("crop_ratio", 1.0, 1e-3, 1.0)
    crop = get("crop_shape", None)
    if resize is not None:
        resize = _shape(resize, f"{cfg_path}: resize_shape")
        # DiffusionConfig.__post_init__ derives the crop from the resize when one is set.
        crop = (int(resize[0] * crop_ratio), int(resize[1] * crop_ratio)) if crop_ratio < 1.0 else None
        prov["crop_shape"] = "config.json:resize_shape x crop_ratio"
    crop = _shape(crop, f"{cfg_path}: crop_shape") if crop is not None else None
    get("crop_is_random", True)  # training-only: inference always centre-crops
    use_gn = flag("use_group_norm", False)
    pretrained = get("pretrained_backbone_weights", None)
    if "spatial_softmax_num_keypoints" in cfg and cfg["spatial_softmax_num_keypoints"] is None:
        raise UnsupportedCheckpointError(f"{cfg_path}: spatial_softmax_num_keypoints=None is not supported")
    n_kp = integer("spatial_softmax_num_keypoints", 1, MAX_DIM, 32)
    separate = flag("use_separate_rgb_encoder_per_camera", False)
    get("down_dims", None)
    down_dims = get_int_list(cfg, "down_dims", src, "", 1, MAX_DIM, [512, 1024, 2048])
    kernel = integer("kernel_size", 1, 63, 5)
    n_groups = integer("n_groups", 1, MAX_DIM, 8)
    dsed = integer("diffusion_step_embed_dim", 4, MAX_DIM, 128)
    film = flag("use_film_scale_modulation", True)

    sched_type = word("noise_scheduler_type", "DDPM").upper()
    if sched_type not in ("DDPM", "DDIM"):
        raise UnsupportedCheckpointError(f"{cfg_path}: noise_scheduler_type {sched_type} is not supported (DDPM, DDIM)")
    n_train = integer("num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS, 100)
    get("num_inference_steps", None)
    n_inf = get_opt_int(cfg, "num_inference_steps", src, "", 1, n_train)
    scheduler = {
        "kind": sched_type.lower(),
        "num_train_timesteps": n_train,
        "beta_schedule": word("beta_schedule", "squaredcos_cap_v2"),
        "beta_start": number("beta_start", 1e-4, 0.0, 1.0),
        "beta_end": number("beta_end", 0.02, 0.0, 1.0),
        "prediction_type": word("prediction_type", "epsilon"),
        "clip_sample": flag("clip_sample", True),
        "clip_sample_range": number("clip_sample_range", 1.0, 0.0, 1e6),
        "num_inference_steps": n_inf if n_inf is not None else n_train,
        # LeRobot builds schedulers with diffusers defaults of its era (current rules).
        "variance_type": "fixed_small",
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "ddpm_prev_rule": "current",
    }
    prov["scheduler"] = "config.json (noise_scheduler_type and beta/clip fields; diffusers defaults otherwise)"
    if n_inf is None:
        prov["num_inference_steps"] = "config.json:num_inference_steps is null -> num_train_timesteps"

    # ---- weights
    raw = _load_safetensors(d / "model.safetensors") if weights else _safetensors_shapes(d / "model.safetensors")
    sd = {strip_compiled(k): v for k, v in raw.items()}
    if len(sd) != len(raw):
        raise CheckpointError(f"{d / 'model.safetensors'}: keys collide after removing _orig_mod.")
    norm_buffers = {k: v for k, v in sd.items() if k.startswith(("normalize_inputs.", "normalize_targets.",
                                                                 "unnormalize_outputs."))}
    model_sd = {k: v for k, v in sd.items() if k not in norm_buffers}
    bad = [k for k in model_sd if not k.startswith("diffusion.")]
    if bad:
        raise CheckpointError(f"{d / 'model.safetensors'}: unexpected key {bad[0]} (LeRobot diffusion keys start with 'diffusion.')")
    for k, v in model_sd.items():
        if not v.is_floating_point() and not k.endswith("num_batches_tracked"):
            raise CheckpointError(f"{d / 'model.safetensors'}: {k} has dtype {v.dtype}, expected floating point")
    model_sd = {k[len("diffusion."):]: (v.float() if v.is_floating_point() else v) for k, v in model_sd.items()}

    width = 64
    if image_keys:
        first = "rgb_encoder.backbone.0.weight" if not separate else "rgb_encoder.0.backbone.0.weight"
        if first not in model_sd:
            raise CheckpointError(f"{d / 'model.safetensors'}: missing {first} "
                                  f"(use_separate_rgb_encoder_per_camera={separate} in config.json)")
        width = int(model_sd[first].shape[0])
        feature_dim = int(model_sd[first.replace("backbone.0.weight", "out.weight")].shape[0]) \
            if first.replace("backbone.0.weight", "out.weight") in model_sd else 2 * n_kp
        prov["encoder width"] = f"model.safetensors: shape of diffusion.{first}"
    else:
        feature_dim = 2 * n_kp
    image_kwargs = dict(crop_shape=crop, resize_shape=resize, norm="group" if use_gn else "batch", width=width,
                        pool="spatial_softmax", num_keypoints=n_kp, feature_dim=feature_dim, relu=True,
                        softmax_layout="lerobot")
    prov["image encoder"] = "config.json: vision_backbone, use_group_norm, spatial_softmax_num_keypoints, crop/resize"
    per_frame = sum(state_dims.values()) + feature_dim * len(image_keys)
    unet_kwargs = dict(input_dim=action_dim, global_cond_dim=per_frame * n_obs, diffusion_step_embed_dim=dsed,
                       down_dims=down_dims, kernel_size=kernel, n_groups=n_groups, cond_predict_scale=film)
    prov["unet"] = "config.json: down_dims, kernel_size, n_groups, diffusion_step_embed_dim, use_film_scale_modulation"

    enc_src = {k: v for k, v in model_sd.items() if k.startswith("rgb_encoder.")}
    unet_src = {k[len("unet."):]: v for k, v in model_sd.items() if k.startswith("unet.")}
    stray = [k for k in model_sd if not k.startswith(("rgb_encoder.", "unet."))]
    if stray:
        raise CheckpointError(f"{d / 'model.safetensors'}: unexpected key diffusion.{stray[0]}")
    src_name = str(d / "model.safetensors")

    def enc_rename(k: str) -> str | None:
        rest = k[len("rgb_encoder."):]
        idx = "0"
        if separate:
            idx, _, rest = rest.partition(".")
            if not idx.isdigit():
                return None
        if rest.startswith("backbone."):
            t = seq_trunk_to_native(rest[len("backbone."):])
            return None if t is None else f"image_encoders.{idx}.backbone.{t}"
        if rest.startswith(("pool.", "out.")):
            return f"image_encoders.{idx}.{rest}"
        return None

    enc_target = target_shapes(lambda: ObservationEncoder(image_shapes, state_dims, feature_order,
                                                          shared=not separate, **image_kwargs))
    try:
        encoder_state = remap(enc_src, enc_rename, enc_target, src_name, "encoder", "diffusion.")
        unet_target = target_shapes(lambda: ConditionalUnet1D(**unet_kwargs))
        unet_state = remap(unet_src, lerobot_unet_to_native, unet_target, src_name, "unet", "diffusion.unet.")
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise UnsupportedCheckpointError(f"{cfg_path}: {err}") from None

    # ---- normalization
    modes, mode_where = _norm_modes(cfg, ins, outs)
    shapes = {**{k: v["shape"] for k, v in ins.items()}, **{k: v["shape"] for k, v in outs.items()}}
    normalization: dict[str, NormField] = {}
    pre = _processor_stats(d, "policy_preprocessor", "normalizer_processor")
    post = _processor_stats(d, "policy_postprocessor", "unnormalizer_processor")
    if pre is not None or post is not None:
        for key in feature_order + ["action"]:
            src = post if (key == "action" and post is not None) else pre
            if src is None:
                raise CheckpointError(f"{d}: no normalizer statistics for {key}")
            stats_all, step_cfg, fname = src
            norm_map = section(step_cfg, "norm_map", fname, "config")
            ftype = (ins.get(key) or outs.get(key))["type"]
            if norm_map and not (isinstance(norm_map.get(ftype, "IDENTITY"), str)
                                 and norm_map.get(ftype, "IDENTITY") in _MODES):
                raise UnsupportedCheckpointError(f"{fname}: normalization mode {short_repr(norm_map.get(ftype))} for "
                                                 f"{key} is not supported (MEAN_STD, MIN_MAX, IDENTITY)")
            mode = _MODES.get(norm_map.get(ftype, ""), modes[key]) if norm_map else modes[key]
            eps = step_cfg.get("eps", 1e-8)
            if eps != 1e-8:
                raise UnsupportedCheckpointError(f"{fname}: normalizer eps {short_repr(eps)} differs from 1e-8 (not supported)")
            stats = {s: stats_all[f"{key}.{s}"] for s in ("min", "max", "mean", "std") if f"{key}.{s}" in stats_all}
            normalization[key] = _norm_field(key, mode, stats, fname, shapes[key])
        prov["normalization"] = "processor files: " + ", ".join(sorted({p[2] for p in (pre, post) if p}))
    elif norm_buffers:
        found = _buffer_stats(norm_buffers, feature_order + ["action"])
        for key in feature_order + ["action"]:
            normalization[key] = _norm_field(key, modes[key], found.get(key, {}), "model.safetensors buffers",
                                             shapes[key])
        prov["normalization"] = f"model.safetensors normalize_*/unnormalize_* buffers; modes from {mode_where}"
    else:
        raise CheckpointError(f"{d}: no normalization statistics (neither policy_preprocessor*.json with a "
                              "normalizer state file nor normalize_inputs.* buffers in model.safetensors)")
    for key in image_keys:
        nf = normalization[key]
        for s, t in nf.stats.items():
            if t.numel() not in (1, 3):
                raise CheckpointError(f"{normalization[key].source}: {key}.{s} has {t.numel()} values; "
                                      "expected per-channel (3) statistics")
            nf.stats[s] = t.reshape(-1, 1, 1) if t.numel() == 3 else t.reshape(1)

    return ImportedPolicy(
        source_format="lerobot", source_path=str(d), architecture="lerobot DiffusionPolicy (U-Net)",
        horizon=horizon, n_obs_steps=n_obs, n_action_steps=n_act, action_start=n_obs - 1,
        action_dim=action_dim, action_key="action", image_shapes=image_shapes, state_dims=state_dims,
        feature_order=feature_order, shared_image_encoder=not separate, image_kwargs=image_kwargs,
        unet_kwargs=unet_kwargs, scheduler=scheduler, normalization=normalization,
        encoder_state=encoder_state, unet_state=unet_state, provenance=prov,
        notes=(["pretrained backbone with frozen BatchNorm statistics"] if pretrained and not use_gn else []),
    )
