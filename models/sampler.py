"""The whole K-step denoising loop as one fixed-shape nn.Module, for graph capture.

Why a module and not a Python loop around a scheduler: compile backends (torch.compile,
torch.export, ONNX, TensorRT) capture one graph only when the loop has a fixed trip count,
fixed shapes and no Python decisions on tensor values. Here every per-step constant is a
registered buffer (so it moves with ``.to(device)`` and is baked into an exported graph), the
loop over K is a plain Python ``for`` that unrolls during tracing, and which steps add noise is
decided from the spec when the module is built. The arithmetic is
:func:`models.schedulers.apply_step`, the same kernel the step-by-step scheduler uses.
"""
from __future__ import annotations

import torch
from torch import nn

from models.schedulers import NoiseScheduler, SchedulerSpec, StepTable, apply_step


class Sampler(nn.Module):
    """``forward(noise (B,T,A), global_cond (B,D), variance_noise (K,B,T,A) | None) -> (B,T,A)``.

    The result is the final normalized action trajectory. The denoiser is called as
    ``denoiser(x, t, global_cond)`` with ``t`` an int64 tensor of shape (B,).

    Noise: DDPM (and DDIM with eta > 0) add variance noise on each step with t > 0. Pass
    ``variance_noise`` with one row per step (rows of steps that add none are ignored, e.g. the
    t = 0 row) for reproducible runs and for any fixed-shape export; when it is None the module
    draws it with torch.randn inside the graph, one draw per noisy step, in step order.
    """

    def __init__(self, denoiser: nn.Module, spec: SchedulerSpec, num_inference_steps: int | None = None):
        super().__init__()
        self.denoiser = denoiser
        self.spec = spec
        self.scheduler = NoiseScheduler(spec, num_inference_steps)
        table: StepTable = self.scheduler.table
        for name in StepTable.TENSOR_FIELDS:
            # Not persistent: derived from the spec, so they stay out of state_dict / checkpoints.
            self.register_buffer(name, getattr(table, name).clone(), persistent=False)
        self._noisy: tuple[bool, ...] = table.noisy
        self._clip: float | None = self.scheduler.clip_range

    @property
    def num_steps(self) -> int:
        """K: how many times the denoiser runs per call."""
        return len(self._noisy)

    @property
    def needs_variance_noise(self) -> bool:
        """True when some step adds noise, i.e. forward draws randn unless variance_noise is given."""
        return any(self._noisy)

    def step(self, i: int, eps: torch.Tensor, x: torch.Tensor,
             variance_noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step from the buffers (for step-by-step use); ``i`` is the step index, a Python int."""
        noise_std = None
        if self._noisy[i]:
            noise_std = self.noise_std[i]
            if variance_noise is None:
                variance_noise = torch.randn_like(x)
        return apply_step(
            self.spec.kind, self.spec.prediction_type, self._clip,
            self.sqrt_a[i], self.sqrt_b[i], self.coef_x0[i], self.coef_x[i], self.coef_eps[i],
            noise_std, eps, x, variance_noise if noise_std is not None else None,
        )

    def forward(self, noise: torch.Tensor, global_cond: torch.Tensor,
                variance_noise: torch.Tensor | None = None) -> torch.Tensor:
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
        x = noise
        batch = noise.shape[0]
        for i in range(len(self._noisy)):  # fixed K: unrolls under tracing
            t = self.timesteps[i].expand(batch)
            eps = self.denoiser(x, t, global_cond)
            x = self.step(i, eps, x, None if variance_noise is None else variance_noise[i])
        return x
