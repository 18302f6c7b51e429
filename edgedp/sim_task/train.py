"""Training Diffusion Policy (and the regression baseline) on an episode dataset, on the CPU.

The recipe is the paper's: DDPM epsilon-prediction loss, AdamW (lr 1e-4, weight decay 1e-6,
betas 0.95/0.999), a cosine learning-rate schedule after a linear warm-up, an exponential moving
average of the weights (power 0.75, at most 0.9999) that is what gets saved, and a fresh random
crop per image per sample (the encoder crops randomly in train mode, centrally in eval mode).
Checkpoints are native-format directories written atomically, always of the EMA weights.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from edgedp.datasets.episodes import open_episodes
from edgedp.sim_task.dataset import ACTION_KEY, IMAGE_KEY, STATE_KEY, EpisodeDataset


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    warmup: Optional[int] = None  # default: min(500, steps // 10)
    ema_power: float = 0.75
    ema_max: float = 0.9999
    seed: int = 0
    save_every: int = 500
    regression: bool = False
    threads: int = 1
    max_episodes: Optional[int] = None
    spec_overrides: dict = field(default_factory=dict)
    # LeRobot v3.0 datasets: which features feed the policy's image/state/action (None: the only camera,
    # observation.state, action). Old .npz sets have fixed keys.
    image_key: Optional[str] = None
    state_key: Optional[str] = None
    action_key: Optional[str] = None

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, min(500, self.steps // 10))


class EMA:
    """The Diffusion Policy EMAModel: decay = 1 - (1 + step)^-power, clamped to [0, max_value].

    Early steps average over few updates (the model is still moving fast); later ones over many.
    Buffers (normalizer statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, power: float = 0.75, max_value: float = 0.9999):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.power, self.max_value, self.step = power, max_value, 0

    def decay(self) -> float:
        value = 1 - (1 + self.step) ** -self.power
        return max(0.0, min(self.max_value, value))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(d).add_(p.detach(), alpha=1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.step += 1


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear 0→1 over ``warmup`` steps, then a half cosine 1→0 (diffusers' cosine schedule)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return f


class WindowSampler:
    """Training samples: for every frame t, observations t-T_o+1..t and actions t-T_o+1..t-T_o+T_p.

    Indices before an episode's start repeat its first frame and those after its end repeat its
    last one (the original SequenceSampler's edge padding), so a window never spans two episodes
    and the tail teaches the policy to hold still at the target.
    """

    def __init__(self, episode_ends: np.ndarray, n_obs_steps: int, horizon: int):
        starts = np.concatenate([[0], episode_ends[:-1]])
        rows = []
        offsets = np.arange(horizon) - (n_obs_steps - 1)
        for s, e in zip(starts, episode_ends):
            t = np.arange(s, e)[:, None] + offsets[None, :]
            rows.append(np.clip(t, s, e - 1))
        self.index = torch.from_numpy(np.concatenate(rows).astype(np.int64))  # (N, horizon)
        self.n_obs_steps = n_obs_steps

    def __len__(self) -> int:
        return len(self.index)


class InMemoryData:
    """The whole dataset as tensors (a few hundred MB at most for the sim task), gathered per batch."""

    def __init__(self, dataset: EpisodeDataset, n_obs_steps: int, horizon: int, limit: Optional[int] = None,
                 with_images: bool = True):
        # A state-only policy (Push-T on keypoints) never looks at the images: they are not even decoded.
        flat = dataset.flat(limit, images=with_images)
        self.images = torch.from_numpy(flat.image).permute(0, 3, 1, 2).contiguous() if with_images else None
        # Task-specific state features (Push-T's observation.environment_state), fed like observation.state.
        self.extra = {k: torch.from_numpy(v) for k, v in getattr(flat, "extra", {}).items()}
        self.state = torch.from_numpy(flat.state)
        self.action = torch.from_numpy(flat.action)
        self.windows = WindowSampler(flat.episode_ends, n_obs_steps, horizon)
        self.n_obs_steps = n_obs_steps
        self.num_episodes = len(flat.episode_ends)

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """LeRobot-convention statistics: per-channel mean/std of images in [0, 1], min/max of the rest."""
        low_dim = {k: {"min": v.min(0).values, "max": v.max(0).values} for k, v in self.extra.items()}
        low_dim[STATE_KEY] = {"min": self.state.min(0).values, "max": self.state.max(0).values}
        low_dim[ACTION_KEY] = {"min": self.action.min(0).values, "max": self.action.max(0).values}
        img = self.images
        if img is None:
            return low_dim
        sums = torch.zeros(3, dtype=torch.float64)
        sq = torch.zeros(3, dtype=torch.float64)
        for i in range(0, len(img), 1024):  # chunks: a float copy of every image at once would be large
            x = img[i:i + 1024].to(torch.float64) / 255.0
            sums += x.sum(dim=(0, 2, 3))
            sq += (x * x).sum(dim=(0, 2, 3))
        n = img.shape[0] * img.shape[2] * img.shape[3]
        mean = sums / n
        std = (sq / n - mean * mean).clamp_min(0).sqrt()
        return {IMAGE_KEY: {"mean": mean.float(), "std": std.float()}, **low_dim}

    def batch(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = self.windows.index[rows]  # (B, horizon)
        obs_idx = idx[:, : self.n_obs_steps]
        obs = {STATE_KEY: self.state[obs_idx], **{k: v[obs_idx] for k, v in self.extra.items()}}
        if self.images is not None:
            obs[IMAGE_KEY] = self.images[obs_idx].to(torch.float32).div_(255.0)  # (B, T_o, 3, H, W)
        return obs, self.action[idx]


def regression_loss(policy, obs: dict[str, torch.Tensor], action: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """The MSE-regression baseline, trained inside the same network and checkpoint format.

    The U-Net gets pure noise at the one timestep a K=1 sampler uses and must output the clean
    normalized action chunk (``prediction_type: sample``): with an input that carries no information
    it learns the conditional mean E[actions | observation], which is exactly what an MSE regressor
    learns. Run it with K = 1; it then is a deterministic regression policy of the same size, and it
    loads, compiles and runs through the runtime like any native checkpoint.
    """
    batch = policy.normalize_obs(policy.prepare_obs(obs))
    cond = policy.obs_encoder(batch)
    naction = policy.normalizers[policy.spec.action_key](action)
    noise = torch.randn(naction.shape, generator=generator)
    t = int(policy.sampler.scheduler.table.timesteps[0]) if hasattr(policy.sampler.scheduler, "table") else 0
    k = torch.full((naction.shape[0],), t, dtype=torch.int64)
    return nn.functional.mse_loss(policy.denoiser(noise, k, cond), naction)


def make_policy(preset: str, data: InMemoryData, cfg: TrainConfig):
    """A fresh policy of ``preset`` with normalizers fitted on the data (and the regression variant's scheduler)."""
    from models.policy import DiffusionPolicy
    from models.presets import load_preset
    from models.spec import PolicySpec

    spec = load_preset(preset)
    d = _with_overrides(spec.to_dict(), cfg.spec_overrides)
    if cfg.regression:
        d["scheduler"] = {**d.get("scheduler", {}), "kind": "ddim", "prediction_type": "sample",
                          "num_inference_steps": 1, "timestep_spacing": "trailing"}
        d["name"] = f"{d.get('name', preset)}-regression"
    try:
        spec = PolicySpec.from_dict(d)
        spec.validate()
    except (TypeError, KeyError) as exc:
        raise ValueError(f"preset {preset!r} with overrides {cfg.spec_overrides}: {exc}") from None
    torch.manual_seed(cfg.seed)
    policy = DiffusionPolicy(spec, seed=cfg.seed)
    for key, stats in data.stats().items():
        if key not in policy.normalizers:  # a dataset feature this policy does not use
            continue
        policy.normalizers[key].set_stats(**stats)
    return policy


@dataclass
class TrainResult:
    policy: nn.Module  # the EMA policy, eval mode
    losses: list[float]
    seconds: float
    steps: int


def train(dataset_dir: str | Path, preset: str, out: Optional[str | Path], cfg: TrainConfig,
          on_step: Optional[Callable[[int, float, float], None]] = None,
          provenance: Optional[dict] = None) -> TrainResult:
    """Train and (when ``out`` is given) write native checkpoints of the EMA weights to ``out``."""
    from models.native import save_native

    torch.set_num_threads(cfg.threads)
    dataset = open_episodes(dataset_dir, cfg.image_key, cfg.state_key, cfg.action_key)  # v3.0 or .npz
    torch.manual_seed(cfg.seed)
    spec_probe = _probe_spec(preset, cfg)
    data = InMemoryData(dataset, spec_probe.n_obs_steps, spec_probe.horizon, cfg.max_episodes,
                        with_images=bool(spec_probe.image_features))
    _check_shapes(dataset_dir, spec_probe, data)
    policy = make_policy(preset, data, cfg)
    policy.train()
    ema = EMA(policy, cfg.ema_power, cfg.ema_max)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.windows)
    losses: list[float] = []
    started = time.monotonic()
    prov = {"trained_on": str(dataset_dir), "episodes": data.num_episodes, "samples": n, "preset": preset,
            "steps": cfg.steps, "batch": cfg.batch, "lr": cfg.lr, "warmup": cfg.warmup_steps, "seed": cfg.seed,
            "regression": cfg.regression, "threads": cfg.threads, "spec_overrides": dict(cfg.spec_overrides),
            **(provenance or {})}

    def save(step: int) -> None:
        if out is None:
            return
        recent = losses[-100:]
        save_native(ema.model, out, provenance={**prov, "trained_steps": step,
                                                "final_loss_mean_last_100": round(float(np.mean(recent)), 6),
                                                "train_seconds": round(time.monotonic() - started, 1)})

    perm = torch.randperm(n, generator=gen)
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch > n:  # a new epoch: reshuffle
            perm, cursor = torch.randperm(n, generator=gen), 0
        rows = perm[cursor: cursor + cfg.batch]
        cursor += cfg.batch
        obs, action = data.batch(rows)
        if cfg.regression:
            loss = regression_loss(policy, obs, action, gen)
        else:
            loss = policy.compute_loss(obs, action, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(policy)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1], sched.get_last_lr()[0])
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    save(cfg.steps)
    ema.model.eval()
    return TrainResult(ema.model, losses, time.monotonic() - started, cfg.steps)


def _probe_spec(preset: str, cfg: TrainConfig):
    from models.presets import load_preset
    from models.spec import PolicySpec

    return PolicySpec.from_dict(_with_overrides(load_preset(preset).to_dict(), cfg.spec_overrides))


def _with_overrides(d: dict, overrides: dict) -> dict:
    d = copy.deepcopy(d)
    for key, value in overrides.items():  # dotted keys, e.g. "unet.down_dims"
        node = d
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {p!r} is not a section")
        node[last] = value
    return d


def _check_shapes(dataset_dir, spec, data: InMemoryData) -> None:
    """The dataset must match the preset's inputs; say which feature does not."""
    img = tuple(data.images.shape[1:]) if data.images is not None else None
    want_img = tuple(next(iter(spec.image_features.values()))) if spec.image_features else None
    if want_img is not None and img != want_img:
        raise ValueError(f"{dataset_dir}: images are {img[1]}x{img[2]}, preset {spec.name!r} needs {want_img[1]}x{want_img[2]}")
    j = data.state.shape[1]
    want_state = next(iter(spec.state_features.values()))[0] if spec.state_features else None
    if want_state is not None and j != want_state:
        raise ValueError(f"{dataset_dir}: state has {j} joints, preset {spec.name!r} needs {want_state}")
    for key, shape in list(spec.state_features.items())[1:]:  # beyond the joint state: task features
        if key not in data.extra:
            raise ValueError(f"{dataset_dir}: no feature {key!r}, preset {spec.name!r} needs it "
                             f"(the dataset has {', '.join(sorted(data.extra)) or 'no extra features'})")
        if data.extra[key].shape[1] != shape[0]:
            raise ValueError(f"{dataset_dir}: {key} has {data.extra[key].shape[1]} values, preset {spec.name!r} "
                             f"needs {shape[0]}")
    if data.action.shape[1] != spec.action_dim:
        raise ValueError(f"{dataset_dir}: actions have {data.action.shape[1]} values, preset {spec.name!r} needs {spec.action_dim}")
