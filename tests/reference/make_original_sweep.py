#!/usr/bin/env python
"""Reference sweep over the original Diffusion Policy implementation's U-Net policies.

Run with the python of a venv where ``import diffusion_policy`` works (real-stanford/diffusion_policy
at its last commit, diffusers 0.11.1, robomimic 0.2.0, hydra, omegaconf, dill, einops); it never
imports edgedp:

    /work/venvs/dp_orig/venv/bin/python tests/reference/make_original_sweep.py --out DIR [--set small|large|all]

For each case the upstream hydra config is composed (``train_diffusion_unet_{lowdim,hybrid,image}_workspace``
with a Push-T task), the case's edits are applied to the composed config, it is resolved as
``train.py`` does, and the workspace class builds the policy. Then:

1. every parameter of ``model`` and of ``ema_model`` is perturbed with different seeds (norm weights
   ``1 + 0.1 N``, biases ``0.1 N``, BatchNorm running mean/var, everything else ``+ 0.1 std N``), so
   an importer that takes the non-EMA weights fails, as does a wrong group count;
2. a LinearNormalizer is fitted ('limits') on synthetic data and set on both;
3. ``workspace.save_checkpoint(path=...)`` writes ``checkpoint.ckpt`` the way training does;
4. a fresh workspace loads it as ``eval_real_robot.py`` does (``torch.load(pickle_module=dill)``,
   ``load_payload``, EMA policy when ``training.use_ema``), and ``predict_action`` runs with every
   ``torch.randn`` draw served from a seeded generator and recorded: the first draw is the initial
   trajectory (``noise``), the later ones the per-step variance noise (``variance_noise``, row i =
   the draw at step i; zero rows where a step draws none).

``expected.npz``: ``raw.<obs key>`` (n_obs frames, oldest first; images float32 CHW in [0, 1]),
``noise``, ``variance_noise``, ``timesteps``, ``traj`` (``action_pred``, raw units), ``chunk``
(``action``), ``action_range`` (2 / scale of the 'limits' action normalizer, per dim).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import dill
import numpy as np
import torch
from torch import nn

import diffusers
import hydra
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import diffusion_policy
from diffusion_policy.common.normalize_util import get_image_range_normalizer
from diffusion_policy.model.common.normalizer import LinearNormalizer

CFG_DIR = str(Path(list(diffusion_policy.__path__)[0]).resolve() / "config")  # a namespace package
DDIM = "diffusers.schedulers.scheduling_ddim.DDIMScheduler"


def case(name, workspace, ship, edit, summary, seed=0, images=None):
    return dict(name=name, workspace=workspace, ship=ship, edit=edit, summary=summary, seed=seed, images=images)


# ---- config edits (applied to the composed, unresolved cfg) ------------------------------------
def lowdim(n_groups=8, kernel=5, down=(16, 32), dsed=32, film=True, obs_dim=6, **top):
    def edit(cfg):
        m = cfg.policy.model
        m.n_groups, m.kernel_size, m.down_dims, m.diffusion_step_embed_dim = n_groups, kernel, list(down), dsed
        m.cond_predict_scale = film
        cfg.task.obs_dim = obs_dim
        for k, v in top.items():
            _set(cfg, k, v)
    return edit


def _set(cfg, dotted: str, value):
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value


_DELETE = object()


def ddim(k=10, **extra):
    """Swap in diffusers 0.11.1's DDIMScheduler (its constructor has no variance_type)."""
    d = {"policy.noise_scheduler._target_": DDIM, "policy.noise_scheduler.variance_type": _DELETE,
         "policy.noise_scheduler.set_alpha_to_one": True, "policy.noise_scheduler.steps_offset": 0,
         "policy.num_inference_steps": k}
    d.update(extra)
    return d


def both(*edits):
    def edit(cfg):
        for e in edits:
            e(cfg)
    return edit


def sets(**kv):
    def edit(cfg):
        for k, v in kv.items():
            _set(cfg, k.replace("__", "."), v)
    return edit


def flat(d: dict):
    def edit(cfg):
        for k, v in d.items():
            _set(cfg, k, v)
    return edit


def cams(extra: dict):
    """Add rgb cameras (name -> [3, H, W]) after Push-T's 'image' in task.shape_meta.obs; keep agent_pos last."""
    def edit(cfg):
        obs = cfg.task.shape_meta.obs
        agent = OmegaConf.to_container(obs.agent_pos)
        obs.pop("agent_pos")
        for k, s in extra.items():
            obs[k] = {"shape": list(s), "type": "rgb"}
        obs["agent_pos"] = agent
    return edit


def unet(n_groups=8, kernel=5, down=(32, 64), dsed=32, film=True):
    return sets(policy__n_groups=n_groups, policy__kernel_size=kernel, policy__down_dims=list(down),
                policy__diffusion_step_embed_dim=dsed, policy__cond_predict_scale=film)


LOW = "train_diffusion_unet_lowdim_workspace"
HYB = "train_diffusion_unet_hybrid_workspace"
IMG = "train_diffusion_unet_image_workspace"

CASES = [
    # ---- low-dim policies (shipped: a few hundred kB each)
    case("orig_lowdim_groups4_ddim", LOW, True, both(lowdim(n_groups=4), flat(ddim(10))),
         "lowdim, n_groups=4, down_dims=[16, 32], DDIM 10", seed=1),
    case("orig_lowdim_k3_film_off_ddpm10", LOW, True,
         both(lowdim(kernel=3, film=False, dsed=16), sets(policy__num_inference_steps=10)),
         "lowdim, kernel 3, FiLM scale off, step emb 16, DDPM K=10 (0.11.1: t -> t-1 steps)", seed=2),
    case("orig_lowdim_sample_noclip_ddpm", LOW, True,
         both(lowdim(), sets(policy__noise_scheduler__prediction_type="sample",
                             policy__noise_scheduler__clip_sample=False, policy__num_inference_steps=20)),
         "lowdim, sample prediction, clip off, DDPM K=20", seed=3),
    case("orig_lowdim_linear_obs3_h32", LOW, True,
         both(lowdim(down=(8, 16, 32), obs_dim=9, n_obs_steps=3, horizon=32, n_action_steps=12),
              sets(policy__noise_scheduler__beta_schedule="linear", policy__noise_scheduler__num_train_timesteps=50),
              flat(ddim(10))),
         "lowdim, linear betas T=50, n_obs 3, horizon 32, n_action 12, 3 levels, DDIM 10", seed=4),
    case("orig_lowdim_fixed_large_ddpm", LOW, True,
         both(lowdim(), sets(policy__noise_scheduler__variance_type="fixed_large", policy__num_inference_steps=100)),
         "lowdim, DDPM variance fixed_large, K=100", seed=5),
    case("orig_lowdim_fixed_small_log_sigmoid", LOW, True,
         both(lowdim(), sets(policy__noise_scheduler__variance_type="fixed_small_log",
                             policy__noise_scheduler__beta_schedule="sigmoid", policy__num_inference_steps=100)),
         "lowdim, DDPM fixed_small_log, sigmoid betas, K=100", seed=6),
    case("orig_lowdim_ddim_eta", LOW, True, both(lowdim(), flat(ddim(10)), sets(policy__eta=0.5)),
         "lowdim, DDIM 10 with eta 0.5 (policy kwarg passed to scheduler.step)", seed=7),
    case("orig_lowdim_ddim_sample_pred", LOW, True,
         both(lowdim(), flat(ddim(10, **{"policy.noise_scheduler.prediction_type": "sample"}))),
         "lowdim, DDIM 10, sample prediction", seed=8),
    case("orig_lowdim_oa_step_false", LOW, True, both(lowdim(), sets(policy__oa_step_convention=False), flat(ddim(8))),
         "lowdim, oa_step_convention False (actions start at n_obs_steps)", seed=9),
    case("orig_lowdim_steps_offset1_ddim", LOW, True,
         both(lowdim(n_groups=2, down=(8, 16)), flat(ddim(10, **{"policy.noise_scheduler.steps_offset": 1,
                                                                  "policy.noise_scheduler.set_alpha_to_one": False}))),
         "lowdim, n_groups 2, DDIM steps_offset 1, set_alpha_to_one False", seed=10),
    case("orig_lowdim_no_ema_obs1_ddpm7", LOW, True,
         both(lowdim(kernel=7, n_obs_steps=1, horizon=8, n_action_steps=8),
              sets(training__use_ema=False, policy__num_inference_steps=7)),
         "lowdim, no EMA (weights from model), n_obs 1, horizon 8, kernel 7, DDPM K=7 (0.11.1 runs 8 steps)",
         seed=11),
    # ---- image policies (robomimic / torchvision ResNet-18 per encoder): slow test only
    case("orig_hybrid_2cam_sizes_gn_ddim", HYB, False,
         both(cams({"wrist": (3, 80, 88)}), unet(n_groups=4),
              sets(policy__crop_shape=[72, 72], policy__obs_encoder_group_norm=True, policy__eval_fixed_crop=True),
              flat(ddim(8))),
         "hybrid (robomimic), cameras 96x96 + 80x88, crop 72x72, GroupNorm, n_groups 4, DDIM 8", seed=20),
    case("orig_hybrid_bn_nocrop_ddpm", HYB, False,
         both(unet(kernel=3), sets(policy__crop_shape=None, policy__obs_encoder_group_norm=False,
                                   policy__num_inference_steps=10)),
         "hybrid, BatchNorm trunk (running stats), no crop, kernel 3, DDPM K=10", seed=21),
    case("orig_hybrid_random_eval_crop", HYB, False,
         both(unet(), sets(policy__crop_shape=[84, 84], policy__obs_encoder_group_norm=True,
                           policy__eval_fixed_crop=False), flat(ddim(8))),
         "hybrid, eval_fixed_crop False (robomimic crops at random at inference)", seed=22),
    case("orig_image_shared_resize_imnet", IMG, False,
         both(cams({"image2": (3, 96, 96)}), unet(dsed=64),
              sets(policy__obs_encoder__resize_shape=[64, 64], policy__obs_encoder__crop_shape=[56, 56],
                   policy__obs_encoder__share_rgb_model=True, policy__obs_encoder__use_group_norm=True,
                   policy__obs_encoder__imagenet_norm=True), flat(ddim(8))),
         "image (torchvision), 2 cameras, shared encoder, resize 64x64, crop 56x56, ImageNet norm, GroupNorm", seed=30),
    case("orig_image_3cam_separate_bn", IMG, False,
         both(cams({"wrist": (3, 72, 80), "side": (3, 64, 96)}), unet(film=False),
              sets(policy__obs_encoder__resize_shape=[64, 64], policy__obs_encoder__crop_shape=[60, 60],
                   policy__obs_encoder__share_rgb_model=False, policy__obs_encoder__use_group_norm=False,
                   policy__obs_encoder__imagenet_norm=False, policy__num_inference_steps=10)),
         "image, 3 cameras of different sizes, one BatchNorm encoder each, resize 64x64, crop 60x60, FiLM off, DDPM 10",
         seed=31),
    case("orig_image_random_crop_false", IMG, False,
         both(unet(), sets(policy__obs_encoder__crop_shape=[76, 76], policy__obs_encoder__random_crop=False,
                           policy__obs_encoder__use_group_norm=True), flat(ddim(8))),
         "image, random_crop False (upstream then applies no crop at all)", seed=32),
]


# ------------------------------------------------------------------------------------------ build
def compose_cfg(c: dict):
    OmegaConf.register_new_resolver("eval", eval, replace=True)
    task = {LOW: "pusht_lowdim", HYB: "pusht_image", IMG: "pusht_image"}[c["workspace"]]
    with initialize_config_dir(config_dir=CFG_DIR, version_base=None):
        cfg = compose(config_name=c["workspace"], overrides=[f"task={task}"])
    with open_dict(cfg):
        if c["workspace"] != LOW:
            cfg.policy.down_dims = [32, 64]
            cfg.policy.diffusion_step_embed_dim = 32
        c["edit"](cfg)
    OmegaConf.resolve(cfg)
    return cfg


def make_workspace(cfg):
    cls = hydra.utils.get_class(cfg._target_)
    if "output_dir" in inspect.signature(cls.__init__).parameters:
        return cls(cfg, output_dir=tempfile.mkdtemp())
    return cls(cfg)


@torch.no_grad()
def perturb(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    done = set()
    for m in module.modules():
        if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) and m.weight is not None:
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            done.update((id(m.weight), id(m.bias)))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    for name, p in module.named_parameters():
        if id(p) in done or p.numel() == 0 or name.startswith("normalizer."):
            continue
        std = float(p.std()) if p.numel() > 1 else 0.0
        p.add_((0.1 * std if np.isfinite(std) and std > 0 else 0.02) * torch.randn(p.shape, generator=g))


def obs_layout(cfg) -> tuple[dict, dict, int]:
    """(rgb key -> shape, low-dim key -> dim, action dim) as the policy sees them."""
    if "shape_meta" in cfg.policy:
        sm = cfg.policy.shape_meta
        rgb = {k: tuple(v.shape) for k, v in sm.obs.items() if v.get("type", "low_dim") == "rgb"}
        low = {k: int(v.shape[0]) for k, v in sm.obs.items() if v.get("type", "low_dim") == "low_dim"}
        return rgb, low, int(sm.action.shape[0])
    return {}, {"obs": int(cfg.policy.obs_dim)}, int(cfg.policy.action_dim)


def fit_normalizer(rgb: dict, low: dict, a_dim: int, rng: np.random.Generator) -> tuple[LinearNormalizer, dict]:
    data, bounds = {}, {}
    for k, d in list(low.items()) + [("action", a_dim)]:
        lo = rng.uniform(-100.0, 300.0, d)
        hi = lo + rng.uniform(30.0, 500.0, d)
        bounds[k] = (lo, hi)
        data[k] = torch.from_numpy(lo + (hi - lo) * rng.uniform(0, 1, (512, d))).float()
    norm = LinearNormalizer()
    norm.fit(data=data, last_n_dims=1, mode="limits")
    for k in rgb:
        norm[k] = get_image_range_normalizer()
    return norm, bounds


def make_inputs(rgb: dict, low: dict, bounds: dict, n_obs: int, rng: np.random.Generator) -> dict:
    out = {}
    for k, (ch, h, w) in rgb.items():
        yy, xx = np.mgrid[0:h, 0:w]
        frames = [np.stack([0.5 + 0.3 * np.sin((xx + 4 * t) / (6.0 + i)) * np.cos(yy / (5.0 + i)) for i in range(ch)])
                  + rng.normal(0, 0.05, (ch, h, w)) for t in range(n_obs)]
        out[k] = np.clip(np.stack(frames), 0, 1).astype(np.float32)
    for k in low:
        lo, hi = bounds[k]
        x0 = lo + (hi - lo) * rng.uniform(0.2, 0.8, lo.shape)
        out[k] = np.stack([x0 + (hi - lo) * 0.03 * t * rng.uniform(-1, 1, lo.shape) for t in range(n_obs)]).astype(np.float32)
    return out


@contextlib.contextmanager
def recorded_randn(seed: int, draws: list):
    """Serve every torch.randn call from one seeded generator and keep each draw, in call order."""
    real = torch.randn
    g = torch.Generator().manual_seed(seed)

    def fake(*args, **kwargs):
        size = kwargs.pop("size", None)
        if size is None:
            size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
        kwargs.pop("generator", None)
        dtype, device = kwargs.pop("dtype", None) or torch.float32, kwargs.pop("device", None)
        x = real(tuple(size), generator=g, dtype=torch.float32)
        draws.append(x.clone())
        return x.to(dtype=dtype, device=device)

    torch.randn = fake
    try:
        yield
    finally:
        torch.randn = real


@torch.no_grad()
def reference_outputs(ckpt: Path, inputs: dict, seed: int) -> dict:
    payload = torch.load(open(ckpt, "rb"), pickle_module=dill, weights_only=False)
    cfg = payload["cfg"]
    ws = make_workspace(cfg)
    ws.load_payload(payload, exclude_keys=None, include_keys=None)
    policy = ws.ema_model if cfg.training.use_ema else ws.model
    policy.eval()
    obs = {k: torch.from_numpy(v)[None] for k, v in inputs.items()}
    draws: list[torch.Tensor] = []
    with recorded_randn(7000 + seed, draws):
        result = policy.predict_action(obs)
    sched = policy.noise_scheduler
    timesteps = [int(t) for t in sched.timesteps]
    noise = draws[0]
    # Steps that draw: DDPM at t > 0; DDIM at every step when eta > 0.
    eta = float(getattr(policy, "kwargs", {}).get("eta", 0.0))
    drawing = [i for i, t in enumerate(timesteps) if (eta > 0 if "DDIM" in type(sched).__name__ else t > 0)]
    if len(draws) - 1 != len(drawing):
        raise AssertionError(f"{len(draws) - 1} variance draws for {len(drawing)} noisy steps")
    vn = torch.zeros((len(timesteps), *noise.shape))
    for row, d in zip(drawing, draws[1:]):
        vn[row] = d
    out = {f"raw.{k}": v for k, v in inputs.items()}
    out.update(noise=noise.numpy(), variance_noise=vn.numpy(), timesteps=np.array(timesteps, np.int64),
               traj=result["action_pred"].numpy(), chunk=result["action"].numpy())
    return {k: np.asarray(v, dtype=np.int64 if k == "timesteps" else np.float32) for k, v in out.items()}


def build(c: dict, out_root: Path) -> Path:
    d = out_root / c["name"]
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = compose_cfg(c)
    ws = make_workspace(cfg)
    perturb(ws.model, 1000 + c["seed"])
    if getattr(ws, "ema_model", None) is not None:
        perturb(ws.ema_model, 3000 + c["seed"])
    rng = np.random.default_rng(2000 + c["seed"])
    rgb, low, a_dim = obs_layout(cfg)
    norm, bounds = fit_normalizer(rgb, low, a_dim, rng)
    ws.model.set_normalizer(norm)
    if getattr(ws, "ema_model", None) is not None:
        ws.ema_model.set_normalizer(norm)
    ws.global_step, ws.epoch = 100 + c["seed"], 3
    ckpt = d / "checkpoint.ckpt"
    ws.save_checkpoint(path=str(ckpt))  # training's call (use_thread=True: plain-dict state dicts)
    if ws._saving_thread is not None:
        ws._saving_thread.join()
    del ws
    inputs = make_inputs(rgb, low, bounds, int(cfg.policy.n_obs_steps), rng)
    exp = reference_outputs(ckpt, inputs, c["seed"])
    exp["action_range"] = (bounds["action"][1] - bounds["action"][0]).astype(np.float32)
    np.savez(d / "expected.npz", **exp)
    (d / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    meta = dict(case={k: v for k, v in c.items() if k != "edit"}, summary=c["summary"],
                reference="diffusion_policy 5ba07ac", versions={
                    "torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__,
                    "python": platform.python_version()})
    (d / "case.json").write_text(json.dumps(meta, indent=2, default=str))
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--set", choices=("small", "large", "all"), default="all")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    chosen = [c for c in CASES if (args.set == "all" or c["ship"] == (args.set == "small"))
              and (args.only is None or c["name"] in args.only)]
    args.out.mkdir(parents=True, exist_ok=True)
    for c in chosen:
        build(c, args.out)
        print(f"{c['name']}: written {args.out / c['name']}", flush=True)
    print(f"{len(chosen)} case(s) with the original implementation", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
