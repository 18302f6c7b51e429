"""The whole K-step denoising loop as one fixed-shape nn.Module, for graph capture.

Why a module and not a Python loop around a scheduler: compile backends (torch.compile,
torch.export, ONNX, TensorRT) capture one graph only when the loop has a fixed trip count,
fixed shapes and no Python decisions on tensor values. Here every per-step constant is a
registered buffer (so it moves with ``.to(device)`` and is baked into an exported graph), the
loop over K is a plain Python ``for`` that unrolls during tracing, and which steps add noise (DDPM),
which history terms a multistep solver uses, and where a warm start begins are decided from the
spec when the module is built. The arithmetic is the step-by-step schedulers' own kernels
(:func:`models.schedulers.apply_step`, :mod:`models.multistep`), so the loop and the reference
schedulers cannot drift apart.

Samplers (``spec.kind``): ``ddpm``, ``ddim`` (tables of models/schedulers.py), ``dpmsolver++`` and
``unipc`` (models/multistep.py), all on the same trained denoiser.

Optional inputs, all tensors with fixed shapes; whether they are given (None or not) picks the graph:

* warm start (``init``): the previous chunk shifted onto the new time grid; it is noised to the
  level of step ``warm_start`` and only the remaining steps run (Falcon / RTI-DP).
* inpainting (``prefix``, ``n_fixed``, ``n_overlap``): see models/inpainting.py.
"""
from __future__ import annotations

import torch
from torch import nn

from models.inpainting import FORMS, noised, overlap_weights, overwrite
from models.multistep import (
    SOLVER_KINDS, MultistepScheduler, MultistepTable, corrector, data_prediction, multistep_table, predictor,
)
from models.schedulers import NoiseScheduler, SchedulerSpec, StepTable, alphas_cumprod, apply_step, timesteps


def warm_start_index(num_steps: int, level: float) -> int:
    """First step a warm start runs: the last round(level * K) steps run (at least one)."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level <= 1.0:
        raise ValueError(f"warm_start_level must be a number in (0, 1], got {level!r}")
    run = min(num_steps, max(1, int(round(level * num_steps))))
    return num_steps - run


class Sampler(nn.Module):
    """``forward(noise (B,T,A), global_cond (B,D), variance_noise (K,B,T,A) | None, init, prefix, n_fixed,
    n_overlap) -> (B,T,A)`` normalized actions.

    The denoiser is called as ``denoiser(x, t, global_cond)`` with ``t`` an int64 tensor of shape (B,).

    Noise: DDPM (and DDIM with eta > 0) add variance noise on each step with t > 0. Pass
    ``variance_noise`` with one row per step of the full schedule (rows of steps that add none, and
    the rows a warm start skips, are ignored) for reproducible runs and for any fixed-shape export;
    when it is None the module draws it with torch.randn inside the graph.
    """

    def __init__(self, denoiser: nn.Module, spec: SchedulerSpec, num_inference_steps: int | None = None, *,
                 warm_start_level: float | None = None, inpaint: str | None = None):
        super().__init__()
        self.denoiser = denoiser
        self.spec = spec
        self.multistep = spec.kind in SOLVER_KINDS
        self._clip: float | None = float(spec.clip_sample_range) if spec.clip_sample else None
        if inpaint is not None and inpaint not in FORMS:
            raise ValueError(f"inpaint form must be one of {', '.join(FORMS)}, got {inpaint!r}")
        self.inpaint = inpaint
        k = spec.resolved_steps(num_inference_steps)
        if self.multistep:
            ts = timesteps(spec, k).numpy()
            self.scheduler = MultistepScheduler(spec.kind, alphas_cumprod(spec), ts, spec.prediction_type, self._clip)
            table = self.scheduler.table
            self._register("", table, MultistepTable.TENSOR_FIELDS)
            self._orders = {"": (table.corr_order, table.pred_order)}
            self._noisy: tuple[bool, ...] = (False,) * len(table)
        else:
            self.scheduler = NoiseScheduler(spec, k)
            table = self.scheduler.table
            self._register("", table, StepTable.TENSOR_FIELDS)
            # Levels each step starts from, plus the clean end: what warm start and inpainting noise to.
            self.register_buffer("level_a", torch.cat([table.sqrt_a, torch.ones(1)]), persistent=False)
            self.register_buffer("level_b", torch.cat([table.sqrt_b, torch.zeros(1)]), persistent=False)
            self._noisy = table.noisy
        self.warm_start: int | None = None
        if warm_start_level is not None:
            self.warm_start = warm_start_index(len(self._noisy), warm_start_level)
            if self.multistep:  # a suffix is its own schedule (order warm-up from its first step)
                warm = multistep_table(spec.kind, alphas_cumprod(spec), ts[self.warm_start:])
                self._register("warm_", warm, MultistepTable.TENSOR_FIELDS)
                self._orders["warm_"] = (warm.corr_order, warm.pred_order)

    def _register(self, prefix: str, table, names: tuple[str, ...]) -> None:
        for name in names:
            # Not persistent: derived from the spec, so they stay out of state_dict / checkpoints.
            self.register_buffer(prefix + name, getattr(table, name).clone(), persistent=False)

    @property
    def num_steps(self) -> int:
        """K: how many times the denoiser runs per call (from noise)."""
        return len(self._noisy)

    @property
    def num_warm_steps(self) -> int | None:
        """Denoiser calls of a warm-started call, None when built without warm start."""
        return None if self.warm_start is None else self.num_steps - self.warm_start

    @property
    def needs_variance_noise(self) -> bool:
        """True when some step adds noise, i.e. forward draws randn unless variance_noise is given."""
        return any(self._noisy)

    def step(self, i: int, eps: torch.Tensor, x: torch.Tensor,
             variance_noise: torch.Tensor | None = None, target: torch.Tensor | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """One DDPM/DDIM step from the buffers (step-by-step use); ``i`` is the step index, a Python int.

        A multistep solver's step needs its history: only its history-free steps are available here.
        """
        if self.multistep:
            corr, pred = self._orders[""]
            if corr[i] or pred[i] != 1:
                raise ValueError(f"{self.spec.kind} step {i} uses earlier steps: use models.multistep.MultistepScheduler")
            m = data_prediction(self.spec.prediction_type, self._clip, self.sqrt_a[i], self.sqrt_b[i], eps, x,
                                target, weight)
            return predictor(1, self.pred[i], x, m, [])
        noise_std = None
        if self._noisy[i]:
            noise_std = self.noise_std[i]
            if variance_noise is None:
                variance_noise = torch.randn_like(x)
        return apply_step(
            self.spec.kind, self.spec.prediction_type, self._clip,
            self.sqrt_a[i], self.sqrt_b[i], self.coef_x0[i], self.coef_x[i], self.coef_eps[i],
            noise_std, eps, x, variance_noise if noise_std is not None else None, target, weight,
        )

    def forward(self, noise: torch.Tensor, global_cond: torch.Tensor, variance_noise: torch.Tensor | None = None,
                init: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                n_fixed: torch.Tensor | None = None, n_overlap: torch.Tensor | None = None) -> torch.Tensor:
        self._check(noise, global_cond, variance_noise, init, prefix, n_fixed)
        start = 0 if init is None else int(self.warm_start)  # type: ignore[arg-type]
        table = "warm_" if (init is not None and self.multistep) else ""
        if self.multistep:
            level_a, level_b = getattr(self, table + "level_a"), getattr(self, table + "level_b")
        else:
            level_a, level_b = self.level_a[start:], self.level_b[start:]
        x = noise if init is None else noised(init, noise, level_a[0], level_b[0])
        weight = None
        if prefix is not None:
            index = torch.arange(noise.shape[1], device=noise.device)
            weight = overlap_weights(self.inpaint, index, n_fixed, n_fixed if n_overlap is None else n_overlap)
        ctx = _Inpaint(self.inpaint, prefix, weight, noise, level_a, level_b)
        x = ctx.replace(x, 0)
        if self.multistep:
            return self._multistep_loop(table, x, global_cond, ctx)
        batch = noise.shape[0]
        for j, i in enumerate(range(start, self.num_steps)):  # fixed K: unrolls under tracing
            t = self.timesteps[i].expand(batch)
            eps = self.denoiser(x, t, global_cond)
            x = self.step(i, eps, x, None if variance_noise is None else variance_noise[i], *ctx.guide())
            x = ctx.replace(x, j + 1)
        return x

    def _multistep_loop(self, table: str, x: torch.Tensor, cond: torch.Tensor, ctx: "_Inpaint") -> torch.Tensor:
        corr_order, pred_order = self._orders[table]
        ts, sqrt_a, sqrt_b = (getattr(self, table + n) for n in ("timesteps", "sqrt_a", "sqrt_b"))
        corr, pred = getattr(self, table + "corr"), getattr(self, table + "pred")
        history: list[torch.Tensor] = []   # m_{i-1}, m_{i-2}: newest first
        last = x
        for i in range(len(corr_order)):  # fixed K: unrolls under tracing
            out = self.denoiser(x, ts[i].expand(x.shape[0]), cond)
            m = data_prediction(self.spec.prediction_type, self._clip, sqrt_a[i], sqrt_b[i], out, x, *ctx.guide())
            if corr_order[i]:
                x = ctx.replace(corrector(corr_order[i], corr[i], last, history, m), i)
            last = x
            x = ctx.replace(predictor(pred_order[i], pred[i], x, m, history), i + 1)
            history = [m] + history[:1]
        return x

    def _check(self, noise, global_cond, variance_noise, init, prefix, n_fixed) -> None:
        # Shape checks read static sizes only, so they cost nothing in a captured graph.
        if noise.dim() != 3 or global_cond.dim() != 2 or global_cond.shape[0] != noise.shape[0]:
            raise ValueError(
                f"Sampler expects noise (B,T,A) and global_cond (B,D); got {tuple(noise.shape)} and {tuple(global_cond.shape)}"
            )
        if variance_noise is not None and tuple(variance_noise.shape) != (self.num_steps, *noise.shape):
            raise ValueError(
                f"variance_noise must have shape (K, B, T, A) = {(self.num_steps, *noise.shape)}, "
                f"got {tuple(variance_noise.shape)}"
            )
        if init is not None:
            if self.warm_start is None:
                raise ValueError("this sampler was built without warm start (warm_start_level); init must be None")
            if init.shape != noise.shape:
                raise ValueError(f"init must have the noise's shape {tuple(noise.shape)}, got {tuple(init.shape)}")
        if prefix is not None:
            if self.inpaint is None:
                raise ValueError("this sampler was built without inpainting (inpaint form); prefix must be None")
            if prefix.shape != noise.shape or n_fixed is None or n_fixed.shape != (noise.shape[0],):
                raise ValueError(f"inpainting needs prefix {tuple(noise.shape)} and n_fixed ({noise.shape[0]},); got "
                                 f"{tuple(prefix.shape)} and {None if n_fixed is None else tuple(n_fixed.shape)}")


class _Inpaint:
    """What one forward call does to the decided part of the chunk (nothing when there is no prefix)."""

    def __init__(self, form: str | None, prefix, weight, noise, level_a, level_b):
        self.on = prefix is not None
        self.form = form
        self.prefix, self.weight, self.noise = prefix, weight, noise
        self.level_a, self.level_b = level_a, level_b

    def replace(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Replacement form: overwrite the decided indices with the prefix at ``level`` (a static index)."""
        if not self.on or self.form != "replace":
            return x
        known = noised(self.prefix, self.noise, self.level_a[level], self.level_b[level])
        return overwrite(x, known, self.weight)

    def guide(self) -> tuple:
        """Guided form: (target, weight) for the step kernels; (None, None) otherwise."""
        if self.on and self.form == "guided":
            return self.prefix, self.weight
        return None, None
