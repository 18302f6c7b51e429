"""Reference fixtures for the transformer denoiser, made by the ORIGINAL Diffusion Policy code.

Run with the interpreter of a venv that has real-stanford/diffusion_policy importable (commit
5ba07ac, diffusers 0.11.1, robomimic 0.2.0; see /work/venvs/dp_orig/HOWTO.md on the team machine):

    /work/venvs/dp_orig/venv/bin/python tests/reference/make_original_transformer.py [--out DIR] [--hybrid-ckpt]

What it writes (default DIR: tests/fixtures/transformer):
  modules.npz                  TransformerForDiffusion alone, several option corners (causal or
                               not, MLP or transformer condition encoder, encoder-only with the
                               time token as input): perturbed weights (state_dict arrays under
                               "<case>/sd/<key>"), inputs and the module's eval-mode outputs.
  <lowdim case>/checkpoint.ckpt  TrainDiffusionTransformerLowdimWorkspace saved by the real
                               BaseWorkspace.save_checkpoint (model and EMA weights perturbed
                               differently, a fitted LinearNormalizer), and expected.npz with the
                               real predict_action outputs from recorded noise (DDIM-10 and the
                               checkpoint's DDPM with its per-step variance noise), per-step
                               denoiser inputs/outputs and probes.
  refuse_*/checkpoint.ckpt     tiny checkpoints with settings edgedp refuses by name.
  hybrid_small/expected.npz    TrainDiffusionTransformerHybridWorkspace (robomimic ResNet-18, crop
                               84): the transformer's weights, the reference obs features and the
                               sampler records (the 45 MB encoder is not shipped).
  with --hybrid-ckpt also hybrid_small/checkpoint.ckpt (~100 MB; the slow test makes it in a temp dir).

Nothing here is copied from the reference: it drives the reference's own classes, configs and
save path, and records what they compute (float32, CPU, one thread).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import pathlib
import sys
import tempfile

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "transformer"

# Lowdim workspace cases: hydra overrides on train_diffusion_transformer_lowdim_pusht_workspace.
LOWDIM_CASES = {
    "lowdim_causal": [
        "policy.model.n_layer=2", "policy.model.n_emb=64", "policy.model.n_head=4",
        "policy.model.causal_attn=True", "policy.model.n_cond_layers=0",
    ],
    "lowdim_condenc_noncausal": [
        "policy.model.n_layer=2", "policy.model.n_emb=32", "policy.model.n_head=2",
        "policy.model.causal_attn=False", "policy.model.n_cond_layers=2",
        "horizon=12", "n_obs_steps=3", "n_action_steps=6",
        "policy.noise_scheduler.beta_schedule=linear", "policy.noise_scheduler.clip_sample=False",
    ],
    # One observation step, sample prediction, a 1-layer attention condition encoder. diffusers 0.11.1's
    # DDIM mistreats sample prediction (edgedp refuses that pairing), so only the DDPM run is recorded.
    "lowdim_sample_to1": [
        "policy.model.n_layer=1", "policy.model.n_emb=32", "policy.model.n_head=4",
        "policy.model.causal_attn=True", "policy.model.n_cond_layers=1",
        "horizon=8", "n_obs_steps=1", "n_action_steps=4", "policy.noise_scheduler.prediction_type=sample",
    ],
}
REFUSE_CASES = {
    "refuse_obs_inpainting": ["obs_as_cond=False", "policy.model.n_layer=1", "policy.model.n_emb=16",
                              "policy.model.n_head=2"],
    "refuse_pred_action_steps_only": ["pred_action_steps_only=True", "policy.model.n_layer=1",
                                      "policy.model.n_emb=16", "policy.model.n_head=2"],
}
HYBRID_OVERRIDES = ["task=pusht_image", "policy.crop_shape=[84,84]", "policy.n_layer=2", "policy.n_emb=64",
                    "policy.n_head=4", "policy.causal_attn=True", "policy.n_cond_layers=0"]

# Module-only corners: kwargs of TransformerForDiffusion.
MODULE_CASES = {
    "causal_mlp": dict(input_dim=3, output_dim=3, horizon=8, n_obs_steps=2, cond_dim=5, n_layer=2, n_head=2,
                       n_emb=32, causal_attn=True, n_cond_layers=0),
    "noncausal_mlp": dict(input_dim=3, output_dim=3, horizon=8, n_obs_steps=3, cond_dim=5, n_layer=2, n_head=4,
                          n_emb=32, causal_attn=False, n_cond_layers=0),
    "causal_condenc": dict(input_dim=2, output_dim=2, horizon=10, n_obs_steps=2, cond_dim=7, n_layer=1,
                           n_head=4, n_emb=32, causal_attn=True, n_cond_layers=2),
    "encoder_only_causal": dict(input_dim=4, output_dim=4, horizon=8, n_obs_steps=2, cond_dim=0, n_layer=2,
                                n_head=2, n_emb=32, causal_attn=True, time_as_cond=False),
    "encoder_only_noncausal": dict(input_dim=4, output_dim=4, horizon=6, n_obs_steps=2, cond_dim=0, n_layer=1,
                                   n_head=2, n_emb=16, causal_attn=False, time_as_cond=False),
}
PROBE_K = [0, 23, 61, 99]


def _reference():
    """Import the reference lazily (this file is also imported by the test suite for its constants)."""
    import dill  # noqa: F401
    import hydra
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import diffusion_policy
    OmegaConf.register_new_resolver("eval", eval, replace=True)
    cfg_dir = str(pathlib.Path(list(diffusion_policy.__path__)[0]) / "config")
    return hydra, compose, initialize_config_dir, OmegaConf, cfg_dir


def compose_cfg(name: str, overrides: list[str]):
    hydra, compose, initialize_config_dir, OmegaConf, cfg_dir = _reference()
    with initialize_config_dir(config_dir=cfg_dir, version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    OmegaConf.resolve(cfg)  # as train.py does
    return cfg


def make_workspace(cfg):
    import hydra
    cls = hydra.utils.get_class(cfg._target_)
    if "output_dir" in inspect.signature(cls.__init__).parameters:
        return cls(cfg, output_dir=tempfile.mkdtemp())
    return cls(cfg)  # TrainDiffusionTransformerLowdimWorkspace takes only cfg


def perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights far from init (norm weights, biases and learned positions too); masks untouched."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() == 0 or name.startswith("normalizer."):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("pos_emb"):
                p.copy_(0.5 * noise)
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)         # LayerNorm / GroupNorm scale
            elif p.dim() == 1:
                p.add_(0.1 * noise)                # biases
            else:
                fan_in = p.shape[-1] if p.dim() == 2 else int(np.prod(p.shape[1:]))
                p.add_(noise * (1.5 / fan_in ** 0.5))  # large enough that attention is far from uniform
        for name, b in module.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                b.copy_(b + 0.1 * torch.rand(b.shape, generator=gen))


def calibrate_head(model: torch.nn.Module, cond: torch.Tensor, horizon: int, gen: torch.Generator,
                   target_std: float = 0.4) -> None:
    """Scale the output head so the denoiser's outputs have std ~target_std: random weights otherwise
    push x0 predictions far outside [-1, 1] and clip_sample would flatten every final action."""
    x = torch.randn((cond.shape[0], horizon, model.head.out_features), generator=gen)
    with torch.no_grad():
        std = float(model(x, torch.tensor([50]), cond).std())
        model.head.weight.mul_(target_std / std)
        model.head.bias.mul_(target_std / std)


def fit_normalizer(fields: dict[str, torch.Tensor]):
    from diffusion_policy.model.common.normalizer import LinearNormalizer
    n = LinearNormalizer()
    n.fit(fields, last_n_dims=1, mode="limits")
    return n


def image_normalizer(n, key: str):
    """The hybrid image field: identity-like limits on [0, 1] images, as get_image_range_normalizer does."""
    from diffusion_policy.model.common.normalizer import SingleFieldLinearNormalizer
    scale = torch.tensor([1.9]); offset = torch.tensor([-0.93])
    stat = {"min": torch.tensor([0.0]), "max": torch.tensor([1.0]), "mean": torch.tensor([0.5]), "std": torch.tensor([0.29])}
    n[key] = SingleFieldLinearNormalizer.create_manual(scale=scale, offset=offset, input_stats_dict=stat)


@contextlib.contextmanager
def recording_randn(draws: list):
    """Record every torch.randn draw (initial trajectory, then DDPM's per-step variance noise)."""
    orig = torch.randn

    def rec(*args, **kwargs):
        out = orig(*args, **kwargs)
        draws.append(out.detach().clone())
        return out

    torch.randn = rec
    try:
        yield
    finally:
        torch.randn = orig


def run_sampler(policy, obs_dict, scheduler, k: int, tag: str, out: dict, seed: int) -> None:
    """policy.predict_action with `scheduler` and K steps; records noise, per-step x/eps, outputs."""
    policy.noise_scheduler = scheduler
    policy.num_inference_steps = k
    steps: list = []
    h = policy.model.register_forward_hook(lambda m, a, o: steps.append((a[0].clone(), int(a[1]), o.clone())))
    draws: list = []
    torch.manual_seed(seed)
    with torch.no_grad(), recording_randn(draws):
        res = policy.predict_action(obs_dict)
    h.remove()
    ts = scheduler.timesteps.numpy().astype(np.int64)
    assert [s[1] for s in steps] == list(ts), "hook order"
    out[f"{tag}_noise"] = draws[0].numpy()
    out[f"{tag}_timesteps"] = ts
    out[f"{tag}_step_x"] = np.stack([s[0].numpy() for s in steps])
    out[f"{tag}_step_eps"] = np.stack([s[2].numpy() for s in steps])
    out[f"{tag}_action_pred"] = res["action_pred"].numpy()
    out[f"{tag}_action"] = res["action"].numpy()
    out[f"{tag}_naction_pred"] = policy.normalizer["action"].normalize(res["action_pred"]).detach().numpy()
    if len(draws) > 1:
        vn = np.zeros((len(ts),) + draws[0].shape, np.float32)
        extra = iter(draws[1:])
        for i, t in enumerate(ts):
            if t > 0:
                vn[i] = next(extra).numpy()
        out[f"{tag}_variance_noise"] = vn


def ddim_like(ddpm):
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    c = ddpm.config
    return DDIMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
                         beta_schedule=c.beta_schedule, clip_sample=c.clip_sample, set_alpha_to_one=True,
                         steps_offset=0, prediction_type=c.prediction_type)


def record_policy(ws, obs_dict, cond: torch.Tensor, out: dict) -> None:
    """All sampler runs and probes for the EMA policy, plus the non-EMA diagnostic."""
    policy = ws.ema_model
    policy.eval()
    ddpm = policy.noise_scheduler
    out["alphas_cumprod"] = ddpm.alphas_cumprod.numpy().astype(np.float32)
    with_ddim = ddpm.config.prediction_type == "epsilon"
    if with_ddim:
        run_sampler(policy, obs_dict, ddim_like(ddpm), 10, "ddim10", out, seed=1)
    run_sampler(policy, obs_dict, ddpm, ddpm.config.num_train_timesteps, "ddpm100", out, seed=2)
    gen = torch.Generator().manual_seed(3)
    shape = out["ddpm100_noise"].shape
    probe_x = torch.randn((len(PROBE_K),) + shape, generator=gen)
    with torch.no_grad():
        out["probe_eps"] = np.stack([policy.model(probe_x[i], torch.tensor([k]), cond).numpy()
                                     for i, k in enumerate(PROBE_K)])
        out["nonema_probe_eps"] = np.stack([ws.model.model(probe_x[i], torch.tensor([k]), cond).numpy()
                                            for i, k in enumerate(PROBE_K)])
    out["probe_x"] = probe_x.numpy()
    out["probe_k"] = np.array(PROBE_K, np.int64)
    ws.model.eval()
    nonema: dict = {}
    if with_ddim:
        run_sampler(ws.model, obs_dict, ddim_like(ddpm), 10, "ddim10", nonema, seed=1)
    else:
        run_sampler(ws.model, obs_dict, ddpm, ddpm.config.num_train_timesteps, "ddpm100", nonema, seed=2)
    tag = "ddim10" if with_ddim else "ddpm100"
    out[f"nonema_{tag}_action_pred"] = nonema[f"{tag}_action_pred"]


def save(ws, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ws.save_checkpoint(path=path, use_thread=True)  # the default training path (plain-dict copies)
    if ws._saving_thread is not None:
        ws._saving_thread.join()


def make_lowdim(name: str, overrides: list[str], out_dir: pathlib.Path, seed: int, record: bool = True) -> None:
    cfg = compose_cfg("train_diffusion_transformer_lowdim_pusht_workspace", overrides)
    ws = make_workspace(cfg)
    gen = torch.Generator().manual_seed(seed)
    perturb(ws.model, gen)
    ws.ema_model = copy.deepcopy(ws.model)
    perturb(ws.ema_model, gen)
    obs_dim, act_dim = int(cfg.obs_dim), int(cfg.action_dim)
    if cfg.obs_as_cond:
        for m in (ws.model, ws.ema_model):
            calibrate_head(m.model, torch.randn((1, int(cfg.n_obs_steps), obs_dim), generator=gen),
                           int(cfg.horizon), gen)
    data = {"obs": 40 + 430 * torch.rand((500, obs_dim), generator=gen),
            "action": 30 + 450 * torch.rand((500, act_dim), generator=gen)}
    norm = fit_normalizer(data)
    ws.model.set_normalizer(norm)
    ws.ema_model.set_normalizer(norm)
    save(ws, out_dir / name / "checkpoint.ckpt")
    (out_dir / name / "config.yaml").write_text(_omegaconf().to_yaml(cfg))
    if not record:
        return
    to = int(cfg.n_obs_steps)
    prev = 40 + 430 * torch.rand((1, 1, obs_dim), generator=gen)
    obs = torch.cat([prev + 6 * torch.randn((1, 1, obs_dim), generator=gen) * i for i in range(to)], dim=1)
    out = {"obs": obs.numpy()}
    nobs = ws.ema_model.normalizer["obs"].normalize(obs)
    out["nobs"] = nobs.detach().numpy()
    out["global_cond"] = nobs.detach().reshape(1, -1).numpy()
    record_policy(ws, {"obs": obs}, nobs.detach(), out)
    np.savez_compressed(out_dir / name / "expected.npz", **out)
    a = out["ddpm100_action_pred"]
    print(f"{name}: ddpm100 action_pred range {a.min():.1f}..{a.max():.1f}")


def _omegaconf():
    from omegaconf import OmegaConf
    return OmegaConf


def make_hybrid(out_dir: pathlib.Path, seed: int, write_ckpt: bool) -> None:
    cfg = compose_cfg("train_diffusion_transformer_hybrid_workspace", HYBRID_OVERRIDES)
    ws = make_workspace(cfg)
    gen = torch.Generator().manual_seed(seed)
    perturb(ws.model, gen)
    ws.ema_model = copy.deepcopy(ws.model)
    perturb(ws.ema_model, gen)
    norm = fit_normalizer({"agent_pos": 20 + 480 * torch.rand((500, 2), generator=gen),
                           "action": 10 + 500 * torch.rand((500, 2), generator=gen)})
    image_normalizer(norm, "image")
    ws.model.set_normalizer(norm)
    ws.ema_model.set_normalizer(norm)
    to = int(cfg.n_obs_steps)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    frames = []
    for i in range(to):
        img = torch.stack([xx, yy, 0.5 * (xx + yy)]) * 0.8
        cx, cy = 30 + 10 * i, 50 - 6 * i
        disc = ((torch.arange(96)[None, :] - cx) ** 2 + (torch.arange(96)[:, None] - cy) ** 2) < 120
        img[2][disc] = 0.95
        frames.append((img + 0.03 * torch.randn(img.shape, generator=gen)).clamp(0, 1))
    image = torch.stack(frames)[None]
    agent_pos = torch.tensor([[[231.4, 318.4], [244.8, 307.7]]])[:, :to]
    obs_dict = {"image": image, "agent_pos": agent_pos}
    policy = ws.ema_model
    policy.eval()
    for m in (ws.model, ws.ema_model):
        with torch.no_grad():
            f = m.obs_encoder(m.normalizer.normalize({k: v[:, :to].reshape(-1, *v.shape[2:]) for k, v in obs_dict.items()}))
        calibrate_head(m.model, f.reshape(1, to, -1), int(cfg.horizon), gen)
    d = out_dir / "hybrid_small"
    d.mkdir(parents=True, exist_ok=True)
    if write_ckpt:  # after every weight change: the file holds exactly the weights recorded below
        save(ws, d / "checkpoint.ckpt")
    (d / "config.yaml").write_text(_omegaconf().to_yaml(cfg))
    feats = []
    h = policy.obs_encoder.register_forward_hook(lambda m, a, o: feats.append(o.detach().clone()))
    with torch.no_grad():
        policy.obs_encoder(policy.normalizer.normalize({k: v[:, :to].reshape(-1, *v.shape[2:]) for k, v in obs_dict.items()}))
    h.remove()
    cond = feats[0].reshape(1, to, -1)
    out = {"obs_image": image.numpy(), "obs_agent_pos": agent_pos.numpy(), "obs_features": feats[0].numpy(),
           "global_cond": cond.reshape(1, -1).numpy()}
    record_policy(ws, obs_dict, cond, out)
    sd = {f"sd/{k}": v.detach().numpy() for k, v in policy.model.state_dict().items()}
    norm_sd = {f"norm/{k}": v.detach().numpy() for k, v in policy.normalizer.state_dict().items()}
    np.savez_compressed(d / "expected.npz", **out, **sd, **norm_sd)
    print(f"hybrid_small: obs features {tuple(feats[0].shape)}; ddpm100 range "
          f"{out['ddpm100_action_pred'].min():.1f}..{out['ddpm100_action_pred'].max():.1f}")


def make_modules(out_dir: pathlib.Path, seed: int) -> None:
    from diffusion_policy.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
    gen = torch.Generator().manual_seed(seed)
    arrays = {}
    for name, kw in MODULE_CASES.items():
        m = TransformerForDiffusion(p_drop_emb=0.1, p_drop_attn=0.1, **kw)
        perturb(m, gen)
        m.eval()
        b = 2
        x = torch.randn((b, kw["horizon"], kw["input_dim"]), generator=gen)
        cond = torch.randn((b, kw["n_obs_steps"], kw["cond_dim"]), generator=gen) if kw["cond_dim"] else None
        outs = []
        with torch.no_grad():
            for t in (torch.tensor(7), torch.tensor([0, 99]), 42):
                outs.append(m(x, t, cond).numpy())
        arrays[f"{name}/x"] = x.numpy()
        if cond is not None:
            arrays[f"{name}/cond"] = cond.numpy()
        arrays[f"{name}/out_t7"], arrays[f"{name}/out_t0_99"], arrays[f"{name}/out_int42"] = outs
        for k, v in m.state_dict().items():
            arrays[f"{name}/sd/{k}"] = v.numpy()
    np.savez_compressed(out_dir / "modules.npz", **arrays)
    print(f"modules.npz: {len(MODULE_CASES)} cases")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--hybrid-ckpt", action="store_true", help="also write the ~100 MB hybrid checkpoint")
    ap.add_argument("--only", choices=["modules", "lowdim", "refuse", "hybrid"], action="append")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    only = set(args.only or ["modules", "lowdim", "refuse", "hybrid"])
    args.out.mkdir(parents=True, exist_ok=True)
    if "modules" in only:
        make_modules(args.out, seed=11)
    if "lowdim" in only:
        for i, (name, ov) in enumerate(LOWDIM_CASES.items()):
            make_lowdim(name, ov, args.out, seed=100 + i)
    if "refuse" in only:
        for i, (name, ov) in enumerate(REFUSE_CASES.items()):
            make_lowdim(name, ov, args.out, seed=200 + i, record=False)
    if "hybrid" in only:
        make_hybrid(args.out, seed=300, write_ckpt=args.hybrid_ckpt)


if __name__ == "__main__":
    sys.exit(main())
