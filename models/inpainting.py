"""Conditioning a new action chunk on actions that are already decided: masks, alignment, noising.

When a chunk is planned while the previous one executes, the actions that run during inference come
from the previous chunk whatever the new one says. Real-time inpainting makes the new chunk agree with
them, so the join needs no cross-fade. The sampler (models/sampler.py) takes, as tensors:

* ``prefix`` (B, T, A): the previous chunk re-sampled on the new chunk's time grid (normalized units);
* ``n_fixed`` (B,): indices j < n_fixed are decided (the past, plus what runs during inference);
* ``n_overlap`` (B,): indices n_fixed <= j < n_overlap are still covered by the previous plan; the guided
  form weighs them with a decaying mask (Real-Time Chunking's), the replacement form ignores them.

Two forms (docs/samplers.md has the equations):

* ``replace`` (RePaint): before every denoiser call and after the last step, the decided indices of
  x are overwritten with the prefix noised to that level, sqrt(abar) y + sqrt(1 - abar) z, where z is
  the chunk's own initial noise (so the known and the free parts share one noise draw).
* ``guided``: every step pulls the clean-sample estimate x0 towards y by the weight W_j (1 on the decided
  indices, exponentially decaying over the overlap, 0 after) and changes eps consistently.

Everything here is tensor arithmetic without data-dependent Python branches (it traces with fixed
shapes); ``shift_chunk`` is the numpy helper the planner uses to build ``prefix``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

FORMS = ("replace", "guided")
_E_MINUS_1 = math.e - 1.0


def overlap_weights(form: str, index: torch.Tensor, n_fixed: torch.Tensor, n_overlap: torch.Tensor) -> torch.Tensor:
    """Per-index weight (B, T, 1) in [0, 1]: 1 where decided; for ``guided`` RTC's soft tail over the overlap.

    Soft tail (Black et al. 2025, eq. 5): c_j = (n_overlap - j) / (n_overlap - n_fixed + 1),
    W_j = c_j (e^{c_j} - 1) / (e - 1) for n_fixed <= j < n_overlap, 0 after.
    """
    j = index.to(torch.float32)[None, :]                      # (1, T)
    fixed = n_fixed.to(torch.float32).reshape(-1, 1)          # (B, 1)
    hard = (j < fixed).to(torch.float32)
    if form == "replace":
        return hard[..., None]
    end = n_overlap.to(torch.float32).reshape(-1, 1)
    span = torch.clamp(end - fixed + 1.0, min=1.0)
    c = torch.clamp((end - j) / span, min=0.0, max=1.0)
    soft = c * (torch.exp(c) - 1.0) / _E_MINUS_1
    soft = soft * (j < end).to(torch.float32)
    return torch.maximum(hard, soft)[..., None]


def noised(target: torch.Tensor, noise: torch.Tensor, sqrt_a: torch.Tensor, sqrt_b: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): the target at one noise level (also the warm start's initial sample)."""
    return sqrt_a * target + sqrt_b * noise


def overwrite(x: torch.Tensor, known: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x where weight = 0, known where weight = 1 (torch.lerp is exact at both ends)."""
    return torch.lerp(x, known, weight.expand_as(x))


def shift_chunk(values: np.ndarray, shift: float) -> np.ndarray:
    """values re-sampled at index j + shift for every j (linear interpolation; ends repeat the end values).

    The previous chunk's index j + shift is the new chunk's index j when the new observation is
    ``shift`` action periods later. Past the previous chunk's end the last action is repeated (the
    warm start's tail padding); ``shift`` may be fractional (observations are not on the action grid).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"shift_chunk expects a (T, A) array, got shape {values.shape}")
    if not math.isfinite(shift):
        raise ValueError(f"shift_chunk: shift must be finite, got {shift!r}")
    n = values.shape[0]
    pos = np.clip(np.arange(n, dtype=np.float64) + shift, 0.0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo)[:, None]
    return values[lo] * (1.0 - frac) + values[hi] * frac
