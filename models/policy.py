"""DiffusionPolicy: normalizers + observation encoder + denoiser (conditional U-Net or transformer) + K-step sampler, built from a PolicySpec.

This is the Policy interface of the runtime: ``predict_chunk(obs, noise=None)`` returns a
(horizon, action_dim) action chunk in raw units. Everything else here exists so that compile
backends and checkpoint importers can reach the parts: ``encode`` (once per chunk),
``denoise`` (one network call), ``sample`` (the whole normalized K-step loop).

Module tree (= native state_dict keys):
    normalizers.fields.<key with '.'->'__'>.{min,max | mean,std | scale,offset}
    obs_encoder.image_encoders.<i>.{backbone,pool,out}.*   (models/encoder.py)
    unet.*                                                  (models/unet1d.py, spec.denoiser unet)
    transformer.*                                           (models/transformer1d.py, spec.denoiser transformer)
The sampler holds only schedule tables derived from the spec and K; it is rebuilt, not saved,
so the inference step count can change at load time without touching the weights.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from models.encoder import ObservationEncoder
from models.normalizer import FieldNormalizer, NormalizerSet
from models.spec import PolicySpec
from models.transformer1d import TransformerForDiffusion
from models.unet1d import ConditionalUnet1D


class PolicyInputError(ValueError):
    """An observation or noise array does not fit the policy; the message names the key and shape."""


class DiffusionPolicy(nn.Module):
    def __init__(self, spec: PolicySpec, num_inference_steps: int | None = None, seed: int = 0):
        super().__init__()
        spec.validate()
        self._spec = spec
        conv = spec.normalization.convention
        fields: dict[str, FieldNormalizer] = {}
        for k, s in spec.image_features.items():
            stat_shape = (s[0], 1, 1) if conv == "lerobot" else (1,)
            fields[k] = FieldNormalizer(spec.norm_mode(k), conv, stat_shape)
        for k, s in spec.state_features.items():
            fields[k] = FieldNormalizer(spec.norm_mode(k), conv, (s[0],))
        fields[spec.action_key] = FieldNormalizer(spec.norm_mode(spec.action_key), conv, (spec.action_dim,))
        self.normalizers = NormalizerSet(fields)

        e = spec.encoder
        self.obs_encoder = ObservationEncoder(
            {k: tuple(s) for k, s in spec.image_features.items()},
            {k: s[0] for k, s in spec.state_features.items()},
            feature_order=spec.resolved_feature_order,
            shared=e.shared,
            crop_shape=e.crop_shape,
            resize_shape=e.resize_shape,
            norm=e.norm,
            width=e.width,
            pool=e.pool,
            num_keypoints=e.num_keypoints,
            feature_dim=e.feature_dim,
            relu=e.relu,
            softmax_layout=e.softmax_layout,
            softmax_temperature=e.softmax_temperature,
            project=e.project,
            imagenet_norm=e.imagenet_norm,
        )
        if spec.denoiser == "transformer":
            t = spec.transformer
            self.transformer = TransformerForDiffusion(
                input_dim=spec.action_dim, output_dim=spec.action_dim, horizon=spec.horizon,
                n_obs_steps=spec.n_obs_steps, cond_dim=self.obs_encoder.per_frame_dim, n_layer=t.n_layer,
                n_head=t.n_head, n_emb=t.n_emb, p_drop_emb=t.p_drop_emb, p_drop_attn=t.p_drop_attn,
                causal_attn=t.causal_attn, time_as_cond=t.time_as_cond, n_cond_layers=t.n_cond_layers)
        else:
            u = spec.unet
            self.unet = ConditionalUnet1D(
                input_dim=spec.action_dim,
                global_cond_dim=self.obs_encoder.output_dim(spec.n_obs_steps),
                diffusion_step_embed_dim=u.diffusion_step_embed_dim,
                down_dims=tuple(u.down_dims),
                kernel_size=u.kernel_size,
                n_groups=u.n_groups,
                cond_predict_scale=u.cond_predict_scale,
            )
        from models.schedulers import SchedulerSpec

        self._scheduler_spec = SchedulerSpec.from_dict(spec.scheduler)
        self._num_inference_steps = num_inference_steps
        self._sampler_options: dict[str, Any] = {}  # warm_start_level / inpaint (configure_sampler)
        self._sampler: nn.Module | None = None  # built lazily on the denoiser's device, never saved
        self._generator_seed = int(seed)
        self._generator: torch.Generator | None = None
        self.eval()

    # ---- properties the runtime reads ----------------------------------------------------
    @property
    def spec(self) -> PolicySpec:
        return self._spec

    @property
    def n_obs_steps(self) -> int:
        return self._spec.n_obs_steps

    @property
    def horizon(self) -> int:
        return self._spec.horizon

    @property
    def n_action_steps(self) -> int:
        return self._spec.n_action_steps

    @property
    def action_dim(self) -> int:
        return self._spec.action_dim

    @property
    def action_slice(self) -> slice:
        start = self.n_obs_steps - 1
        return slice(start, start + self.n_action_steps)

    @property
    def image_keys(self) -> list[str]:
        return self._spec.image_keys

    @property
    def state_keys(self) -> list[str]:
        return self._spec.state_keys

    @property
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {k: tuple(s) for k, s in self._spec.image_features.items()}
        shapes.update({k: tuple(s) for k, s in self._spec.state_features.items()})
        return shapes

    @property
    def denoiser(self) -> nn.Module:
        """The network called K times: ``self.unet`` or ``self.transformer`` (spec.denoiser), same call signature."""
        return self.transformer if self._spec.denoiser == "transformer" else self.unet

    @property
    def global_cond_dim(self) -> int:
        return self.denoiser.global_cond_dim

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # ---- sampler -------------------------------------------------------------------------
    @property
    def scheduler_spec(self):
        """models.schedulers.SchedulerSpec parsed from spec.scheduler (validated at construction)."""
        return self._scheduler_spec

    @property
    def num_inference_steps(self) -> int:
        return int(self.sampler.num_steps)

    def adopt_weights(self, state: dict, device: str | torch.device = "cpu",
                      num_inference_steps: int | None = None) -> "DiffusionPolicy":
        """Take checked weights, move to ``device``, set K and switch to eval: the common end of every loader.

        The values are copied into the policy's own tensors: tensors straight from a safetensors or zip
        buffer may be misaligned, which makes oneDNN pick other kernels (different rounding, slower).
        A bad K raises ValueError; loaders turn it into their own one-line error.
        """
        want = self.state_dict()
        self.load_state_dict({k: v.to(dtype=want[k].dtype) for k, v in state.items()}, strict=True)
        self.to(device)
        if num_inference_steps is not None:
            self.set_num_inference_steps(num_inference_steps)
        return self.eval()

    def set_num_inference_steps(self, k: int | None) -> None:
        """Change K (DDIM: any K without retraining); the next call rebuilds the sampler."""
        self._num_inference_steps = k
        self._sampler = None
        _ = self.sampler  # validate now, so a bad K fails here and not mid-run

    def configure_sampler(self, kind: str | None = None, warm_start_level: float | None = None,
                          inpaint: str | None = None, timesteps: Any = None) -> None:
        """Sample the same weights another way: ``kind`` (ddpm, ddim, dpmsolver++, unipc; None keeps the
        checkpoint's), a warm start that runs the last ``warm_start_level`` fraction of the K steps from the
        previous chunk, and an inpainting form (replace | guided). Runtime choices, never saved. A choice
        that does not suit K (e.g. dpmsolver++ with K = 100 and 'leading' spacing) raises ValueError here and
        leaves the policy as it was. ``timesteps`` (multistep solvers only): an explicit descending list (K becomes
        its length) or 'logsnr' (K timesteps uniform in log-SNR at the K in use); None = the spacing rule. It lives
        in scheduler_spec.timesteps, so every loop built from this policy (compile backends, serve) uses it."""
        import dataclasses

        from models.schedulers import with_timesteps

        old = (self._scheduler_spec, self._sampler_options, self._num_inference_steps)
        try:
            if kind is not None and kind != self._scheduler_spec.kind:
                # The K in use is checked for the new kind when the sampler is built, not the spec's default
                # (a checkpoint saved with K = 100 may run dpmsolver++ at K = 4).
                self._num_inference_steps = self.num_inference_steps
                eta = self._scheduler_spec.eta if kind == "ddim" else 0.0
                self._scheduler_spec = dataclasses.replace(self._scheduler_spec, kind=kind, eta=eta,
                                                           num_inference_steps=None, timesteps=None)
            if timesteps is not None or self._scheduler_spec.timesteps is not None:
                self._scheduler_spec = with_timesteps(self._scheduler_spec, timesteps, self._num_inference_steps)
                if self._scheduler_spec.timesteps is not None:
                    self._num_inference_steps = len(self._scheduler_spec.timesteps)
            self._sampler_options = {k: v for k, v in (("warm_start_level", warm_start_level), ("inpaint", inpaint))
                                     if v is not None}
            self._sampler = None
            _ = self.sampler
        except ValueError:
            self._scheduler_spec, self._sampler_options, self._num_inference_steps = old
            self._sampler = None
            raise

    @property
    def explicit_timesteps(self) -> list[int] | None:
        """The timesteps policy.timesteps set (resolved: 'logsnr' as its list), None for the spacing rule: what a
        run summary records and what edgedp serve reports, so a robot can refuse a server sampling elsewhere."""
        ts = self._scheduler_spec.timesteps
        return None if ts is None else [int(t) for t in ts]

    @property
    def sampler_options(self) -> dict[str, Any]:
        """Keyword options every K-step loop over this policy is built with (compile backends use them too)."""
        return dict(self._sampler_options)

    @property
    def sampler(self) -> nn.Module:
        """B's whole-loop Sampler over this policy's denoiser (the module compile backends take)."""
        if self._sampler is None:
            from models.sampler import Sampler

            sampler = Sampler(self.denoiser, self.scheduler_spec, self._num_inference_steps, **self._sampler_options)
            # Keep it out of the module tree (its tables are derived, and its denoiser is self.unet / self.transformer).
            object.__setattr__(self, "_sampler", sampler.to(self.device))
        return self._sampler  # type: ignore[return-value]

    @property
    def stochastic(self) -> bool:
        """True when sampling draws noise at every step (DDPM, or DDIM with eta > 0)."""
        return bool(self.sampler.needs_variance_noise)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to()/.half() must reach the sampler's tables too; rebuilding is cheap and always right.
        out = super()._apply(fn, recurse)
        object.__setattr__(self, "_sampler", None)
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_sampler":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ---- randomness ----------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        self._generator_seed = int(seed)
        self._generator = None

    def _rng(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(self._generator_seed)
        return self._generator

    def random_noise(self, batch: int = 1) -> torch.Tensor:
        """Initial x_K ~ N(0, I), (batch, horizon, action_dim), from the policy's seeded generator."""
        x = torch.randn((batch, self.horizon, self.action_dim), generator=self._rng(), dtype=torch.float32)
        return x.to(device=self.device, dtype=self.dtype)

    def random_variance_noise(self, batch: int = 1) -> torch.Tensor | None:
        """Per-step noise (K, batch, horizon, action_dim) for stochastic samplers, else None."""
        if not self.stochastic:
            return None
        k = self.num_inference_steps
        x = torch.randn((k, batch, self.horizon, self.action_dim), generator=self._rng(), dtype=torch.float32)
        return x.to(device=self.device, dtype=self.dtype)

    # ---- input conversion ----------------------------------------------------------------
    def prepare_obs(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Raw observations -> float tensors with a batch axis: images (B, n_obs, 3, H, W) in [0, 1],
        state (B, n_obs, D). Unbatched input (leading n_obs axis) gets B = 1. Images may be uint8
        (n_obs, H, W, 3) or (n_obs, 3, H, W), or float (n_obs, 3, H, W) in [0, 1]."""
        if not isinstance(obs, Mapping):
            raise PolicyInputError(f"observation must be a mapping of feature name to array, got {type(obs).__name__}")
        out: dict[str, torch.Tensor] = {}
        n = self.n_obs_steps
        for k, shape in self._spec.image_features.items():
            x = self._fetch(obs, k)
            if x.dtype == torch.uint8:
                if x.dim() in (4, 5) and x.shape[-1] == 3 and x.shape[-3] != 3:
                    x = x.movedim(-1, -3)
                x = x.contiguous().to(torch.float32) / 255.0
            elif not torch.is_floating_point(x):
                raise PolicyInputError(f"observation {k!r}: images must be uint8 or float, got {x.dtype}")
            if x.dim() == 4:
                x = x.unsqueeze(0)
            want = (n, *shape)
            if x.dim() != 5 or tuple(x.shape[1:]) != tuple(want):
                raise PolicyInputError(
                    f"observation {k!r}: expected shape {want} (n_obs, 3, H, W) or uint8 {(n, shape[1], shape[2], 3)}, "
                    f"got {tuple(self._fetch(obs, k).shape)}")
            out[k] = x.to(torch.float32)
        for k, shape in self._spec.state_features.items():
            x = self._fetch(obs, k)
            if not torch.is_floating_point(x):
                x = x.to(torch.float32)
            if x.dim() == 2:
                x = x.unsqueeze(0)
            if x.dim() != 3 or tuple(x.shape[1:]) != (n, shape[0]):
                raise PolicyInputError(f"observation {k!r}: expected shape {(n, shape[0])} (n_obs, D), "
                                       f"got {tuple(self._fetch(obs, k).shape)}")
            out[k] = x.to(torch.float32)
        batches = {v.shape[0] for v in out.values()}
        if len(batches) > 1:
            raise PolicyInputError(f"observation: features disagree on the batch size {sorted(batches)}")
        for k, v in out.items():
            if not torch.isfinite(v).all():
                raise PolicyInputError(f"observation {k!r}: contains NaN or infinite values")
        return {k: v.contiguous().to(self.device) for k, v in out.items()}

    @staticmethod
    def _fetch(obs: Mapping[str, Any], key: str) -> torch.Tensor:
        if key not in obs:
            raise PolicyInputError(f"observation is missing feature {key!r} (got: {', '.join(map(str, obs)) or 'nothing'})")
        x = obs[key]
        if isinstance(x, torch.Tensor):
            return x.detach()
        try:
            return torch.from_numpy(np.ascontiguousarray(x))
        except TypeError as exc:
            raise PolicyInputError(f"observation {key!r}: not a numeric array ({exc})") from None

    def prepare_noise(self, noise: Any, batch: int = 1) -> torch.Tensor:
        x = noise.detach() if isinstance(noise, torch.Tensor) else torch.from_numpy(np.asarray(noise, dtype=np.float32))
        if x.dim() == 2:
            x = x.unsqueeze(0)
        want = (batch, self.horizon, self.action_dim)
        if tuple(x.shape) != want:
            raise PolicyInputError(f"noise: expected shape {want[1:]} (horizon, action_dim) or {want}, got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype)

    # ---- the pipeline --------------------------------------------------------------------
    def normalize_obs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.normalizers[k](v) for k, v in batch.items()}

    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Raw observations -> global condition (B, n_obs * per_frame_dim)."""
        with torch.inference_mode():
            batch = self.normalize_obs(self.prepare_obs(obs))
            batch = {k: v.to(self.dtype) for k, v in batch.items()}
            return self.obs_encoder(batch)

    def denoise(self, x: torch.Tensor, k: torch.Tensor | int, global_cond: torch.Tensor) -> torch.Tensor:
        """One network evaluation eps_theta(x_k, k | cond) (or the sample, per prediction type)."""
        return self.denoiser(x, k, global_cond)

    def sample(self, global_cond: torch.Tensor, noise: torch.Tensor,
               variance_noise: torch.Tensor | None = None, **conditioning: Any) -> torch.Tensor:
        """The full K-step loop from noise to a normalized trajectory (B, horizon, action_dim).

        ``conditioning``: the sampler's warm-start / inpainting tensors (init, prefix, n_fixed, n_overlap)."""
        if variance_noise is None and self.stochastic:
            variance_noise = self.random_variance_noise(noise.shape[0])
        return self.sampler(noise, global_cond, variance_noise, **conditioning)

    def unnormalize_action(self, naction: torch.Tensor) -> torch.Tensor:
        return self.normalizers[self._spec.action_key].unnormalize(naction)

    def predict_chunk(self, obs: Mapping[str, Any], noise: Any = None, *, sampler: Any = None, encoder: Any = None,
                      timing: dict[str, float] | None = None,
                      conditioning: Mapping[str, Any] | None = None) -> np.ndarray:
        """(horizon, action_dim) float32 actions in raw units; index n_obs_steps-1 is "now".

        The one observation -> chunk path. A runtime passes its compiled K-step loop as ``sampler``
        ((global_cond, noise) -> normalized actions; default: ``self.sample``) and, when its backend compiled
        one, ``encoder`` (raw observation -> global condition, normalization included). ``timing``, when
        given, receives the milliseconds of each stage, measured here so that no caller has to reach into the
        networks: normalize (input checks + normalization; 0 when a compiled encoder does it), encode, sample
        (all K denoising steps), unnormalize (including the copy to the host). ``conditioning``: the sampler's
        warm-start / inpainting tensors, passed through."""
        marks = [time.perf_counter()]

        def mark() -> None:
            if timing is not None:
                if self.device.type == "cuda":  # the clock must see the work, not its launch
                    torch.cuda.synchronize(self.device)
                marks.append(time.perf_counter())

        with torch.inference_mode():
            if encoder is None:
                batch = self.normalize_obs(self.prepare_obs(obs))
                mark()
                global_cond = self.obs_encoder({k: v.to(self.dtype) for k, v in batch.items()})
            else:
                mark()
                global_cond = encoder(obs)
            mark()
            if global_cond.shape[0] != 1:
                raise PolicyInputError(f"predict_chunk takes one observation, got a batch of {global_cond.shape[0]}")
            x = self.random_noise(1) if noise is None else self.prepare_noise(noise)
            naction = (self.sample if sampler is None else sampler)(global_cond, x, **(conditioning or {}))
            mark()
            action = self.unnormalize_action(naction.to(self.device, self.dtype))
            out = action[0].to(device="cpu", dtype=torch.float32).numpy().copy()
            mark()
        if timing is not None:
            for name, a, b in zip(("normalize", "encode", "sample", "unnormalize"), marks, marks[1:]):
                timing[name] = (b - a) * 1e3
        return out

    def predict_action(self, obs: Mapping[str, Any], noise: Any = None) -> np.ndarray:
        """Only the executed steps, (n_action_steps, action_dim)."""
        return self.predict_chunk(obs, noise)[self.action_slice]

    # ---- training ------------------------------------------------------------------------
    def compute_loss(self, obs: Mapping[str, Any], action: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """The Diffusion Policy training loss on a batch (call in train mode, with autograd).

        obs: raw features batched (B, n_obs, ...); action: raw (B, horizon, action_dim).
        Draws k ~ U{0..N-1} and eps ~ N(0, I), noises the normalized actions with the forward
        process, and returns MSE(eps_theta(x_k, k | obs), target), target = eps for epsilon
        prediction or the clean actions for sample prediction.
        """
        from models.schedulers import NoiseScheduler

        spec = self._scheduler_spec
        if spec.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"compute_loss: prediction_type {spec.prediction_type!r} is not supported for training")
        batch = self.normalize_obs(self.prepare_obs(obs))
        global_cond = self.obs_encoder({k: v.to(self.dtype) for k, v in batch.items()})
        a = action if isinstance(action, torch.Tensor) else torch.from_numpy(np.asarray(action, dtype=np.float32))
        a = a.to(device=self.device, dtype=torch.float32)
        if tuple(a.shape) != (global_cond.shape[0], self.horizon, self.action_dim):
            raise PolicyInputError(f"action: expected shape {(global_cond.shape[0], self.horizon, self.action_dim)}, "
                                   f"got {tuple(a.shape)}")
        naction = self.normalizers[self._spec.action_key](a).to(self.dtype)
        b = naction.shape[0]
        eps = torch.randn(naction.shape, generator=generator, dtype=torch.float32).to(naction)
        k = torch.randint(0, spec.num_train_timesteps, (b,), generator=generator).to(self.device)
        noisy = NoiseScheduler(spec).add_noise(naction, eps, k)
        pred = self.denoiser(noisy, k, global_cond)
        target = eps if spec.prediction_type == "epsilon" else naction
        return torch.nn.functional.mse_loss(pred, target)

    def parameter_counts(self) -> dict[str, int]:
        name = self._spec.denoiser  # "unet" | "transformer"; "denoiser" is the same count under one name
        n_denoiser = sum(p.numel() for p in self.denoiser.parameters())
        return {
            name: n_denoiser,
            "denoiser": n_denoiser,
            "obs_encoder": sum(p.numel() for p in self.obs_encoder.parameters()),
            "total": sum(p.numel() for p in self.parameters()),
        }
