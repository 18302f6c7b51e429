"""The importers cover the configuration space, not just the shipped fixtures.

Each case builds a random native policy of some configuration, writes it in the foreign layout
(LeRobot directory or original workspace .ckpt, with that format's key names, aliases, config
and normalization files), imports it back and requires the same numbers: every weight must land
in the right place for the outputs to agree exactly. Unsupported options must be refused by name.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint_import import CheckpointError
from models.checkpoint_import.api import describe_foreign, import_checkpoint, load_foreign, read_foreign
from models.policy import DiffusionPolicy
from models.spec import EncoderSpec, NormalizationSpec, PolicySpec, UnetSpec



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _random_policy(spec: PolicySpec, seed: int = 0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    pol = DiffusionPolicy(spec)
    with torch.no_grad():
        for name, p in pol.named_parameters():
            p.add_(0.05 * torch.randn_like(p))  # GroupNorm etc. away from 1/0 so misplacement shows
        for name, b in pol.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
    return pol.eval()


def _set_stats(pol: DiffusionPolicy, stats: dict[str, dict[str, torch.Tensor]]) -> None:
    for k, st in stats.items():
        pol.normalizers[k].set_stats(**st)


def _obs(pol: DiffusionPolicy, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for k, s in pol.spec.image_features.items():
        obs[k] = torch.rand((pol.n_obs_steps, *s), generator=g).numpy()
    for k, s in pol.spec.state_features.items():
        obs[k] = (50 + 20 * torch.randn((pol.n_obs_steps, s[0]), generator=g)).numpy()
    return obs


def _same_outputs(a: DiffusionPolicy, b: DiffusionPolicy) -> None:
    obs = _obs(a)
    ga, gb = a.encode(obs), b.encode(obs)
    torch.testing.assert_close(gb, ga, rtol=0, atol=0)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((1, a.horizon, a.action_dim), generator=g)
    vn = torch.randn((a.num_inference_steps, 1, a.horizon, a.action_dim), generator=g)
    assert a.num_inference_steps == b.num_inference_steps
    with torch.inference_mode():
        xa = a.unnormalize_action(a.sample(ga, noise, vn if a.stochastic else None))
        xb = b.unnormalize_action(b.sample(gb, noise, vn if b.stochastic else None))
    torch.testing.assert_close(xb, xa, rtol=0, atol=0)


# ---------------------------------------------------------------- LeRobot layout writer
def _native_to_lerobot(key: str) -> str:
    if key.startswith("obs_encoder.image_encoders."):
        rest = key[len("obs_encoder.image_encoders."):]
        idx, _, rest = rest.partition(".")
        trunk = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
        if rest.startswith("backbone."):
            head, _, tail = rest[len("backbone."):].partition(".")
            rest = f"backbone.{trunk[head]}.{tail}"
        return f"rgb_encoder.{idx}.{rest}"
    assert key.startswith("unet."), key
    rest = key[len("unet."):]
    rest = rest.replace(".blocks.0.block.", ".conv1.block.").replace(".blocks.1.block.", ".conv2.block.")
    rest = re.sub(r"^((?:down|up)_modules\.\d+\.2)\.conv\.", r"\1.", rest)
    return "unet." + rest


def write_lerobot(pol: DiffusionPolicy, d: Path, *, cfg_extra: dict, stats_in: str = "processor",
                  compiled: bool = False) -> Path:
    d.mkdir(parents=True)
    spec = pol.spec
    shared = spec.encoder.shared
    sd = {}
    for k, v in pol.state_dict().items():
        if k.startswith("normalizers."):
            continue
        lk = _native_to_lerobot(k)
        if shared:
            lk = lk.replace("rgb_encoder.0.", "rgb_encoder.")
        sd[("diffusion._orig_mod." if compiled else "diffusion.") + lk] = v.contiguous().clone()
    ins = {k: {"type": "VISUAL", "shape": s} for k, s in spec.image_features.items()}
    feats = {}
    for k, s in spec.state_features.items():
        feats[k] = {"type": "ENV" if k == "observation.environment_state" else "STATE", "shape": s}
    # LeRobot lists features in dataset order; put state after the cameras to test we don't rely on it.
    ins.update(feats)
    outs = {"action": {"type": "ACTION", "shape": [spec.action_dim]}}
    stats = {}
    for k in list(ins) + ["action"]:
        fn = pol.normalizers[k]
        for name in fn.buffer_names:
            stats[f"{k}.{name}"] = getattr(fn, name).clone()
    cfg = {"type": "diffusion", "n_obs_steps": spec.n_obs_steps, "horizon": spec.horizon,
           "n_action_steps": spec.n_action_steps, "input_features": ins, "output_features": outs,
           "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX", "ACTION": "MIN_MAX"},
           "vision_backbone": "resnet18", "crop_shape": spec.encoder.crop_shape, "crop_is_random": True,
           "use_group_norm": spec.encoder.norm == "group",
           "pretrained_backbone_weights": None if spec.encoder.norm == "group" else "ResNet18_Weights.IMAGENET1K_V1",
           "spatial_softmax_num_keypoints": spec.encoder.num_keypoints,
           "use_separate_rgb_encoder_per_camera": not shared, "down_dims": spec.unet.down_dims,
           "kernel_size": spec.unet.kernel_size, "n_groups": spec.unet.n_groups,
           "diffusion_step_embed_dim": spec.unet.diffusion_step_embed_dim,
           "use_film_scale_modulation": spec.unet.cond_predict_scale,
           "noise_scheduler_type": spec.scheduler["kind"].upper(), "num_train_timesteps": 100,
           "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon",
           "clip_sample": True, "clip_sample_range": 1.0, "num_inference_steps": spec.scheduler["num_inference_steps"]}
    cfg.update(cfg_extra)
    if cfg.pop("_old_config", False):  # pre-0.1 layout (e.g. the first lerobot/diffusion_pusht on the hub)
        modes = {"VISUAL": "mean_std", "STATE": "min_max", "ENV": "min_max"}
        cfg["input_shapes"] = {k: v["shape"] for k, v in cfg.pop("input_features").items()}
        cfg["output_shapes"] = {k: v["shape"] for k, v in cfg.pop("output_features").items()}
        cfg["input_normalization_modes"] = {k: modes[v["type"]] for k, v in ins.items()}
        cfg["output_normalization_modes"] = {"action": "min_max"}
        del cfg["normalization_mapping"], cfg["type"]
    if stats_in == "processor":
        save_file({k: v for k, v in stats.items()}, str(d / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
        save_file({k: v for k, v in stats.items() if k.startswith("action.")},
                  str(d / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
        step = {"eps": 1e-8, "features": {**ins, **outs}, "norm_map": cfg["normalization_mapping"]}
        (d / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": [
            {"registry_name": "to_batch_processor", "config": {}},
            {"registry_name": "normalizer_processor", "config": step,
             "state_file": "policy_preprocessor_step_3_normalizer_processor.safetensors"}]}))
        (d / "policy_postprocessor.json").write_text(json.dumps({"name": "policy_postprocessor", "steps": [
            {"registry_name": "unnormalizer_processor", "config": step,
             "state_file": "policy_postprocessor_step_0_unnormalizer_processor.safetensors"}]}))
    else:  # older LeRobot: statistics as buffers inside the model file
        for k, v in stats.items():
            feat, stat = k.rsplit(".", 1)
            buf = "buffer_" + feat.replace(".", "_")
            prefixes = ["normalize_targets.", "unnormalize_outputs."] if feat == "action" else ["normalize_inputs."]
            for p in prefixes:
                sd[f"{p}{buf}.{stat}"] = v.clone()
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def _lerobot_spec(**kw) -> PolicySpec:
    base = dict(action_dim=4, image_features={"observation.images.top": [3, 64, 80], "observation.images.wrist": [3, 64, 80]},
                state_features={"observation.state": [6]}, n_obs_steps=2, horizon=8, n_action_steps=4,
                encoder=EncoderSpec(width=16, num_keypoints=8, feature_dim=16, shared=False, crop_shape=[48, 64]),
                unet=UnetSpec(down_dims=[32, 64], diffusion_step_embed_dim=32),
                scheduler={"kind": "ddpm", "num_inference_steps": 6, "ddpm_prev_rule": "schedule"},
                normalization=NormalizationSpec(convention="lerobot"))
    base.update(kw)
    spec = PolicySpec(**base)
    spec.feature_order = list(spec.state_features)[:1] + list(spec.image_features) + list(spec.state_features)[1:]
    return spec.validate()


def _lerobot_stats(spec: PolicySpec) -> dict:
    st = {}
    for k in spec.image_features:
        st[k] = {"mean": torch.tensor([0.4, 0.5, 0.6]), "std": torch.tensor([0.2, 0.25, 0.3])}
    for k, s in spec.state_features.items():
        st[k] = {"min": -torch.arange(1.0, s[0] + 1), "max": 10 * torch.arange(1.0, s[0] + 1)}
    st["action"] = {"min": torch.zeros(spec.action_dim) - 3, "max": torch.arange(1.0, spec.action_dim + 1) * 7}
    return st


LEROBOT_CASES = {
    "two_cams_separate_ddpm_processor": (dict(), dict(), "processor", False),
    "three_cams_shared_ddim_buffers_compiled": (
        dict(image_features={f"observation.images.c{i}": [3, 72, 72] for i in range(3)},
             encoder=EncoderSpec(width=16, num_keypoints=4, feature_dim=8, shared=True, crop_shape=None, norm="batch"),
             scheduler={"kind": "ddim", "num_inference_steps": 4, "ddpm_prev_rule": "schedule"},
             unet=UnetSpec(down_dims=[16, 32, 64], kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
                           cond_predict_scale=False)),
        dict(), "buffers", True),
    "env_state_resize_crop_ratio": (
        dict(image_features={"observation.image": [3, 96, 96]},
             state_features={"observation.state": [3], "observation.environment_state": [5]},
             encoder=EncoderSpec(width=16, num_keypoints=8, feature_dim=16, shared=True, crop_shape=[56, 56],
                                 resize_shape=[64, 64])),
        dict(resize_shape=[64, 64], crop_ratio=0.875, crop_shape=[84, 84]), "processor", False),
    "old_config_layout_with_buffers": (
        dict(image_features={"observation.image": [3, 64, 64]}, state_features={"observation.state": [2]},
             encoder=EncoderSpec(width=16, num_keypoints=8, feature_dim=16, shared=True, crop_shape=[56, 56])),
        dict(_old_config=True), "buffers", False),
}


@pytest.mark.parametrize("case", list(LEROBOT_CASES))
def test_lerobot_configurations_round_trip(tmp_path, case):
    spec_kw, cfg_extra, stats_in, compiled = LEROBOT_CASES[case]
    spec = _lerobot_spec(**spec_kw)
    src = _random_policy(spec)
    _set_stats(src, _lerobot_stats(spec))
    d = write_lerobot(src, tmp_path / "pretrained_model", cfg_extra=cfg_extra, stats_in=stats_in, compiled=compiled)
    got = load_foreign(tmp_path)  # the parent folder is accepted too
    assert describe_foreign(tmp_path).to_dict() == got.spec.to_dict()  # header-only read agrees
    assert got.spec.image_keys == spec.image_keys
    assert got.spec.resolved_feature_order == spec.resolved_feature_order
    assert got.spec.encoder.crop_shape == spec.encoder.crop_shape
    _same_outputs(src, got)
    # and through the native format
    out = import_checkpoint(d, tmp_path / "native")
    from models.native import load_native
    _same_outputs(src, load_native(out))


# ---------------------------------------------------------------- original workspace writer
def _native_to_robomimic(key: str, cams: list[str]) -> list[str]:
    """Native encoder key -> robomimic key(s); the backbone/pool also appear under nets.0 / nets.1."""
    rest = key[len("obs_encoder.image_encoders."):]
    idx, _, rest = rest.partition(".")
    cam = cams[int(idx)]
    trunk = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    if rest.startswith("backbone."):
        head, _, tail = rest[len("backbone."):].partition(".")
        sub = f"nets.{trunk[head]}.{tail}"
        return [f"obs_encoder.obs_nets.{cam}.backbone.{sub}", f"obs_encoder.obs_nets.{cam}.nets.0.{sub}"]
    if rest.startswith("pool."):
        return [f"obs_encoder.obs_nets.{cam}.{rest}", f"obs_encoder.obs_nets.{cam}.nets.1.{rest[len('pool.'):]}"]
    assert rest.startswith("out."), rest
    return [f"obs_encoder.obs_nets.{cam}.nets.3.{rest[len('out.'):]}"]


def write_original(pol: DiffusionPolicy, path: Path, *, policy_cls: str, use_ema: bool, sched: dict,
                   pol_extra: dict | None = None, obs_order: list[str] | None = None) -> Path:
    spec = pol.spec
    cams = spec.image_keys
    sd: dict[str, torch.Tensor] = {"_dummy_variable": torch.zeros(0)}
    for k, v in pol.state_dict().items():
        if k.startswith("unet."):
            sd["model." + k[len("unet."):]] = v.clone()
        elif k.startswith("obs_encoder."):
            t = v.clone()
            for rk in _native_to_robomimic(k, cams):
                sd[rk] = t  # same tensor object: saved once, like the real aliasing
    for k in spec.resolved_feature_order + ["action"]:
        fn = pol.normalizers[k]
        name = "obs" if policy_cls.endswith("LowdimPolicy") else k
        sd[f"normalizer.params_dict.{name}.scale"] = fn.scale.clone()
        sd[f"normalizer.params_dict.{name}.offset"] = fn.offset.clone()
        for s in ("max", "min", "mean", "std"):
            sd[f"normalizer.params_dict.{name}.input_stats.{s}"] = torch.zeros_like(fn.scale)
    order = obs_order or spec.resolved_feature_order
    obs_meta = {k: ({"shape": spec.image_features[k], "type": "rgb"} if k in spec.image_features
                    else {"shape": spec.state_features[k], "type": "low_dim"}) for k in order}
    shape_meta = {"obs": obs_meta, "action": {"shape": [spec.action_dim]}}
    pol_cfg = {"_target_": f"diffusion_policy.policy.x.{policy_cls}", "shape_meta": shape_meta,
               "noise_scheduler": sched, "horizon": spec.horizon, "n_action_steps": spec.n_action_steps,
               "n_obs_steps": spec.n_obs_steps, "num_inference_steps": spec.scheduler["num_inference_steps"],
               "obs_as_global_cond": True, "crop_shape": spec.encoder.crop_shape,
               "diffusion_step_embed_dim": spec.unet.diffusion_step_embed_dim, "down_dims": spec.unet.down_dims,
               "kernel_size": spec.unet.kernel_size, "n_groups": spec.unet.n_groups,
               "cond_predict_scale": spec.unet.cond_predict_scale,
               "obs_encoder_group_norm": spec.encoder.norm == "group", "eval_fixed_crop": True}
    pol_cfg.update(pol_extra or {})
    cfg = {"_target_": "diffusion_policy.workspace.w.TrainDiffusionUnetHybridWorkspace", "policy": pol_cfg,
           "training": {"use_ema": use_ema}}
    wrong = {k: (v + 1.0 if v.is_floating_point() and v.numel() else v) for k, v in sd.items()}
    sds = {"model": sd if not use_ema else wrong, "optimizer": {"state": {}, "param_groups": []}}
    if use_ema:
        sds["ema_model"] = sd
    torch.save({"cfg": cfg, "state_dicts": sds, "pickles": {"global_step": b"\x80\x04K\x07."}}, path)
    return path


def _hybrid_spec(**kw) -> PolicySpec:
    base = dict(action_dim=3, image_features={"wrist": [3, 64, 64], "top": [3, 80, 96]},
                state_features={"eef": [7]}, n_obs_steps=3, horizon=12, n_action_steps=6,
                feature_order=["eef", "wrist", "top"],
                encoder=EncoderSpec(width=16, num_keypoints=8, feature_dim=16, shared=False, crop_shape=[56, 56],
                                    softmax_layout="robomimic"),
                unet=UnetSpec(down_dims=[16, 32], diffusion_step_embed_dim=16, n_groups=4, kernel_size=3),
                scheduler={"kind": "ddim", "num_inference_steps": 3, "ddpm_prev_rule": "t_minus_one"},
                normalization=NormalizationSpec(convention="original"))
    base.update(kw)
    return PolicySpec(**base).validate()


def _original_stats(spec: PolicySpec) -> dict:
    st = {k: {"scale": torch.tensor([2.1]), "offset": torch.tensor([-1.05])} for k in spec.image_features}
    for k, s in spec.state_features.items():
        st[k] = {"scale": 0.01 * torch.arange(1.0, s[0] + 1), "offset": -torch.ones(s[0]) * 0.5}
    st["action"] = {"scale": 0.02 * torch.arange(1.0, spec.action_dim + 1), "offset": torch.full((spec.action_dim,), -0.9)}
    return st


DDIM = {"_target_": "diffusers.schedulers.scheduling_ddim.DDIMScheduler", "num_train_timesteps": 100,
        "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
        "prediction_type": "epsilon"}
DDPM = {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler", "num_train_timesteps": 100,
        "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "variance_type": "fixed_small",
        "prediction_type": "epsilon"}


@pytest.mark.parametrize("norm,use_ema,sched", [("group", True, DDIM), ("batch", False, DDPM)])
def test_original_hybrid_configurations_round_trip(tmp_path, norm, use_ema, sched):
    kind = "ddim" if sched is DDIM else "ddpm"
    spec = _hybrid_spec(encoder=EncoderSpec(width=16, num_keypoints=8, feature_dim=16, shared=False,
                                            crop_shape=[56, 56], softmax_layout="robomimic", norm=norm),
                        scheduler={"kind": kind, "num_inference_steps": 4, "ddpm_prev_rule": "t_minus_one"})
    src = _random_policy(spec)
    _set_stats(src, _original_stats(spec))
    ck = write_original(src, tmp_path / "x.ckpt", policy_cls="DiffusionUnetHybridImagePolicy", use_ema=use_ema,
                        sched=sched)
    got = load_foreign(ck)
    assert describe_foreign(ck).to_dict() == got.spec.to_dict()
    assert got.spec.resolved_feature_order == ["eef", "wrist", "top"]
    _same_outputs(src, got)


def test_original_lowdim_round_trip(tmp_path):
    spec = PolicySpec(action_dim=2, state_features={"obs": [9]}, n_obs_steps=3, horizon=8, n_action_steps=4,
                      unet=UnetSpec(down_dims=[16, 32], diffusion_step_embed_dim=16, n_groups=4, cond_predict_scale=False),
                      scheduler={"kind": "ddpm", "num_inference_steps": 5, "ddpm_prev_rule": "t_minus_one"},
                      normalization=NormalizationSpec(convention="original")).validate()
    src = _random_policy(spec)
    _set_stats(src, _original_stats(spec))
    sd = {"model." + k[5:]: v.clone() for k, v in src.state_dict().items() if k.startswith("unet.")}
    for k, name in (("obs", "obs"), ("action", "action")):
        sd[f"normalizer.params_dict.{name}.scale"] = src.normalizers[k].scale.clone()
        sd[f"normalizer.params_dict.{name}.offset"] = src.normalizers[k].offset.clone()
    sd["mask_generator._dummy_variable"] = torch.zeros(0)
    cfg = {"_target_": "w.TrainDiffusionUnetLowdimWorkspace", "training": {"use_ema": False},
           "policy": {"_target_": "p.DiffusionUnetLowdimPolicy", "horizon": 8, "n_obs_steps": 3, "n_action_steps": 4,
                      "obs_dim": 9, "action_dim": 2, "num_inference_steps": 5, "obs_as_global_cond": True,
                      "oa_step_convention": True, "noise_scheduler": DDPM,
                      "model": {"_target_": "m.ConditionalUnet1D", "input_dim": 2, "global_cond_dim": 27,
                                "local_cond_dim": None, "diffusion_step_embed_dim": 16, "down_dims": [16, 32],
                                "kernel_size": 5, "n_groups": 4, "cond_predict_scale": False}}}
    torch.save({"cfg": cfg, "state_dicts": {"model": sd}}, tmp_path / "low.ckpt")
    _same_outputs(src, load_foreign(tmp_path / "low.ckpt"))
    # K override (DDIM needs no retraining): loads and changes the step count
    assert load_foreign(tmp_path / "low.ckpt", num_inference_steps=2).num_inference_steps == 2


# ---------------------------------------------------------------- refusals by name
def _simple_hybrid(tmp_path, **pol_extra) -> Path:
    spec = _hybrid_spec(image_features={"cam": [3, 64, 64]}, state_features={"pos": [2]}, feature_order=["cam", "pos"])
    src = _random_policy(spec)
    _set_stats(src, _original_stats(spec))
    return write_original(src, tmp_path / "h.ckpt", policy_cls=pol_extra.pop("_cls", "DiffusionUnetHybridImagePolicy"),
                          use_ema=False, sched=pol_extra.pop("_sched", DDIM), pol_extra=pol_extra)


@pytest.mark.parametrize("extra,needle", [
    # A transformer policy class over U-Net options: the U-Net's arguments are no transformer policy's.
    ({"_cls": "DiffusionTransformerHybridImagePolicy"}, "cfg.policy.obs_as_global_cond"),
    ({"_cls": "DiffusionUnetVideoPolicy"}, "unsupported policy DiffusionUnetVideoPolicy"),
    ({"obs_as_global_cond": False}, "obs_as_global_cond=False"),
    ({"_sched": {"_target_": "diffusers.DPMSolverMultistepScheduler"}}, "unsupported noise scheduler DPMSolverMultistepScheduler"),
    ({"down_dims": [16, 64]}, "shape"),
])
def test_original_refusals_name_the_problem(tmp_path, extra, needle):
    ck = _simple_hybrid(tmp_path, **extra)
    with pytest.raises(CheckpointError) as exc:
        load_foreign(ck)
    assert needle in str(exc.value) and "h.ckpt" in str(exc.value)


def test_original_alias_that_is_not_an_alias_is_refused(tmp_path):
    ck = _simple_hybrid(tmp_path)
    obj = torch.load(ck, weights_only=True)
    sd = obj["state_dicts"]["model"]
    k = next(k for k in sd if ".nets.0." in k)
    sd[k] = sd[k].clone() + 1
    torch.save(obj, ck)
    with pytest.raises(CheckpointError, match="should alias"):
        load_foreign(ck)


def test_lerobot_refusals_name_the_problem(tmp_path):
    spec = _lerobot_spec()
    src = _random_policy(spec)
    _set_stats(src, _lerobot_stats(spec))
    base = write_lerobot(src, tmp_path / "a", cfg_extra={})
    cfg = json.loads((base / "config.json").read_text())
    for change, needle in [({"type": "act"}, "policy type 'act' is not supported"),
                           ({"vision_backbone": "resnet34"}, "vision_backbone 'resnet34' is not supported"),
                           ({"noise_scheduler_type": "DPM"}, "noise_scheduler_type DPM"),
                           ({"down_dims": [32, 128]}, "diffusion.unet.down_modules.1.0"),
                           ({"use_separate_rgb_encoder_per_camera": False}, "rgb_encoder")]:
        (base / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(CheckpointError) as exc:
            read_foreign(base)
        assert needle in str(exc.value), (change, str(exc.value))
    (base / "config.json").write_text(json.dumps(cfg))
    (base / "policy_preprocessor.json").unlink()
    (base / "policy_postprocessor.json").unlink()
    with pytest.raises(CheckpointError, match="no normalization statistics"):
        read_foreign(base)


# ---------------------------------------------------------------- original image policy (MultiImageObsEncoder)
@pytest.mark.parametrize("shared,norm", [(False, "group"), (True, "batch")])
def test_original_image_policy_round_trip(tmp_path, shared, norm):
    # keys deliberately listed unsorted in shape_meta: the encoder sorts rgb keys, then low-dim keys
    meta_order = ["robot_eef_pose", "camera_1", "camera_0", "gripper"]
    spec = PolicySpec(
        action_dim=2, image_features={"camera_0": [3, 64, 72], "camera_1": [3, 64, 72]},
        state_features={"gripper": [1], "robot_eef_pose": [6]}, n_obs_steps=2, horizon=8, n_action_steps=4,
        feature_order=["camera_0", "camera_1", "gripper", "robot_eef_pose"],
        encoder=EncoderSpec(width=16, pool="avg", project=False, relu=False, imagenet_norm=True, shared=shared,
                            norm=norm, crop_shape=[56, 64], feature_dim=128),
        unet=UnetSpec(down_dims=[16, 32], diffusion_step_embed_dim=16, n_groups=4),
        scheduler={"kind": "ddim", "num_inference_steps": 3, "ddpm_prev_rule": "t_minus_one"},
        normalization=NormalizationSpec(convention="original")).validate()
    src = _random_policy(spec)
    _set_stats(src, _original_stats(spec))
    sd: dict[str, torch.Tensor] = {"_dummy_variable": torch.zeros(0), "obs_encoder._dummy_variable": torch.zeros(0)}
    models = ["rgb"] if shared else spec.image_keys
    for k, v in src.state_dict().items():
        if k.startswith("unet."):
            sd["model." + k[5:]] = v.clone()
        elif k.startswith("obs_encoder.image_encoders."):
            i, _, rest = k[len("obs_encoder.image_encoders."):].partition(".")
            assert rest.startswith("backbone.")
            sd[f"obs_encoder.key_model_map.{models[int(i)]}.{rest[len('backbone.'):]}"] = v.clone()
    for k in spec.resolved_feature_order + ["action"]:
        sd[f"normalizer.params_dict.{k}.scale"] = src.normalizers[k].scale.clone()
        sd[f"normalizer.params_dict.{k}.offset"] = src.normalizers[k].offset.clone()
    shape_meta = {"obs": {k: ({"shape": spec.image_features[k], "type": "rgb"} if k in spec.image_features
                              else {"shape": spec.state_features[k], "type": "low_dim"}) for k in meta_order},
                  "action": {"shape": [2]}}
    cfg = {"_target_": "w.TrainDiffusionUnetImageWorkspace", "training": {"use_ema": True},
           "policy": {"_target_": "diffusion_policy.policy.diffusion_unet_image_policy.DiffusionUnetImagePolicy",
                      "shape_meta": shape_meta, "noise_scheduler": DDIM, "horizon": 8, "n_action_steps": 4,
                      "n_obs_steps": 2, "num_inference_steps": 3, "obs_as_global_cond": True,
                      "diffusion_step_embed_dim": 16, "down_dims": [16, 32], "kernel_size": 5, "n_groups": 4,
                      "cond_predict_scale": True,
                      "obs_encoder": {"_target_": "diffusion_policy.model.vision.multi_image_obs_encoder.MultiImageObsEncoder",
                                      "shape_meta": shape_meta,
                                      "rgb_model": {"_target_": "diffusion_policy.model.vision.model_getter.get_resnet",
                                                    "name": "resnet18", "weights": None},
                                      "resize_shape": None, "crop_shape": [56, 64], "random_crop": True,
                                      "use_group_norm": norm == "group", "share_rgb_model": shared,
                                      "imagenet_norm": True}}}
    torch.save({"cfg": cfg, "state_dicts": {"model": {}, "ema_model": sd}}, tmp_path / "img.ckpt")
    got = load_foreign(tmp_path / "img.ckpt")
    assert got.spec.resolved_feature_order == spec.resolved_feature_order
    assert got.spec.encoder.project is False and got.spec.encoder.imagenet_norm is True
    _same_outputs(src, got)
