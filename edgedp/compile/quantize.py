"""Calibration observations, per-layer INT8 sensitivity, and the accuracy gate.

Why a gate: int8 weights change every denoiser output a little, and K steps compound it.  The
only number that matters to the robot is how far the *actions* move, so the gate runs the
float32 sampler and the candidate from the same observation and the same initial (and per-step)
noise, on observations held out from calibration, and reports RMSE and max |error| in
normalized action units (the policy's [-1, 1] action space).

Where observations come from (documented in docs/compile.md):
* ``--calib FILE.npz``: recorded observations, one array per policy feature key with a leading
  sample axis, shape (N, n_obs_steps, ...) (images uint8 HxWx3 or float 3xHxW in [0, 1]).
  The first half calibrates, the second half is held out for the gate.
* otherwise synthetic observations: top-down scenes of coloured blocks and discs on a plain table
  (what the simulated Push-T-like scene looks like) for images, and states drawn uniformly
  inside the policy's own normalization range.  Calibration and gate use different seeds.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Normalized action units ([-1, 1]).  Set after measuring what the same float32 policy already
# varies by: DDIM K=10 vs K=16 from the same noise moves actions by RMSE ~0.2 on both presets, and
# a different initial noise by ~0.8 (docs/compile.md).  0.05 is a quarter of the K change.
DEFAULT_MAX_RMSE = 0.05
DEFAULT_MAX_ABS = 0.20
DEFAULT_LAYER_TOL = 0.08
SMOOTH_DEFAULT = os.environ.get("EDGEDP_INT8_SMOOTH", "1") == "1"


# ---------------------------------------------------------------- observations
def _synthetic_image(rng: np.random.Generator, shape: tuple[int, int, int], n_obs: int) -> np.ndarray:
    """(n_obs, H, W, 3) uint8: a table with a few blocks/discs that move slightly between frames."""
    _, h, w = shape
    base = rng.uniform(180, 240, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    shapes = []
    for _ in range(int(rng.integers(2, 5))):
        shapes.append((rng.uniform(0, 1, 2) * (h, w), rng.uniform(0.06, 0.2) * min(h, w),
                       rng.uniform(20, 230, size=3), bool(rng.integers(0, 2)), rng.normal(0, 1.5, 2)))
    frames = []
    for f in range(n_obs):
        img = np.empty((h, w, 3), np.float32)
        img[:] = base
        for (cy, cx), r, color, disc, vel in shapes:
            cy, cx = cy + vel[0] * f, cx + vel[1] * f
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if disc else \
                ((np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * 0.6))
            img[mask] = color
        img += rng.normal(0, 3, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _synthetic_state(rng: np.random.Generator, policy: Any, key: str, dim: int, n_obs: int) -> np.ndarray:
    z = torch.from_numpy(rng.uniform(-0.9, 0.9, size=(n_obs, dim)).astype(np.float32))
    norm = policy.normalizers[key]
    raw = z if norm.mode == "identity" else norm.unnormalize(z)
    return raw.numpy().astype(np.float32)


def synthetic_observations(policy: Any, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs: dict[str, np.ndarray] = {}
        for k, shape in policy.spec.image_features.items():
            obs[k] = _synthetic_image(rng, tuple(shape), policy.n_obs_steps)
        for k, shape in policy.spec.state_features.items():
            obs[k] = _synthetic_state(rng, policy, k, int(shape[0]), policy.n_obs_steps)
        out.append(obs)
    return out


def recorded_observations(path: str | Path, policy: Any) -> list[dict[str, np.ndarray]]:
    from edgedp.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"calibration file not found: {p}")
    try:
        data = np.load(p)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"calibration file {p} is not a readable .npz ({exc.__class__.__name__})") from None
    keys = list(policy.spec.image_features) + list(policy.spec.state_features)
    missing = [k for k in keys if k not in data.files]
    if missing:
        raise UserError(f"calibration file {p} lacks feature(s) {', '.join(missing)} (has: {', '.join(data.files)})")
    n = min(int(data[k].shape[0]) for k in keys)
    if n < 2:
        raise UserError(f"calibration file {p} holds {n} observation(s); at least 2 are needed (calibrate + hold out)")
    return [{k: data[k][i] for k in keys} for i in range(n)]


@dataclass
class ObservationSets:
    """Global conditions for calibration and for the held-out gate, with where they came from."""

    calib: torch.Tensor
    heldout: torch.Tensor
    source: str


def observation_sets(policy: Any, source: str | Path | None = None, n_calib: int = 8, n_heldout: int = 8,
                     seed: int = 0) -> ObservationSets:
    if source:
        obs = recorded_observations(source, policy)
        half = len(obs) // 2
        cal, held, src = obs[:half], obs[half:], f"recorded:{source}"
    else:
        cal = synthetic_observations(policy, n_calib, seed)
        held = synthetic_observations(policy, n_heldout, seed + 10_000)
        src = "synthetic"
    enc = lambda xs: torch.cat([policy.encode(o).float().cpu() for o in xs], dim=0)  # noqa: E731
    with torch.inference_mode():
        return ObservationSets(enc(cal), enc(held), src)


def fixed_noise(policy: Any, n: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial noise (n,1,T,A) and per-step variance noise (n,K,1,T,A), reproducible by seed."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, policy.horizon, policy.action_dim), generator=g)
    vnoise = torch.randn((n, steps, 1, policy.horizon, policy.action_dim), generator=g)
    return noise, vnoise


# ---------------------------------------------------------------- sensitivity
def _record_layer_inputs(policy: Any, conds: torch.Tensor, steps: int, keep: int = 12
                         ) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], nn.Module]:
    """Run the float32 loop on the calibration conditions, keeping a spread of each layer's inputs
    and, over every call, each layer's per-input-channel max |activation|."""
    from edgedp.compile.base import FloatOut, float_unet_copy, make_loop
    from edgedp.compile.int8 import QUANT_TYPES

    unet = float_unet_copy(policy, torch.device("cpu"), "fp32")
    loop = make_loop(policy, FloatOut(unet), steps, torch.device("cpu"))
    total_calls = max(1, steps * conds.shape[0])
    stride = max(1, total_calls // keep)
    seen: dict[str, int] = {}
    store: dict[str, list[torch.Tensor]] = {}
    absmax: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in unet.named_modules():
        if isinstance(mod, QUANT_TYPES):
            def hook(m, args, _name=name):
                x = args[0].detach()
                chan = x.abs().amax(dim=tuple(range(x.dim() - 1))) if isinstance(m, nn.Linear) \
                    else x.abs().amax(dim=(0, 2))
                absmax[_name] = chan if _name not in absmax else torch.maximum(absmax[_name], chan)
                i = seen.get(_name, 0)
                seen[_name] = i + 1
                if i % stride == 0 and len(store.setdefault(_name, [])) < keep:
                    store[_name].append(args[0].detach().clone())
            handles.append(mod.register_forward_pre_hook(hook))
    noise, vnoise = fixed_noise(policy, conds.shape[0], steps, seed=1234)
    with torch.inference_mode():
        for i in range(conds.shape[0]):
            loop(noise[i], conds[i: i + 1], vnoise[i] if loop.needs_variance_noise else None)
    for h in handles:
        h.remove()
    return store, absmax, unet


def sensitive_layers(policy: Any, calib: "ObservationSets | torch.Tensor", steps: int,
                     tol: float = DEFAULT_LAYER_TOL) -> tuple[list[str], dict[str, float]]:
    """Layers whose int8 output differs from float32 by more than `tol` (relative L2) stay float."""
    skip, _, errors = calibrate_int8(policy, calib, steps, tol)
    return skip, errors


def calibrate_int8(policy: Any, calib: "ObservationSets | torch.Tensor", steps: int,
                   tol: float = DEFAULT_LAYER_TOL, smooth: bool | None = None
                   ) -> tuple[list[str], dict[str, torch.Tensor], dict[str, float]]:
    """(float layers, per-layer activation maxima for smoothing, per-layer relative int8 error)."""
    from edgedp.compile.int8 import _lower

    conds = calib.calib if isinstance(calib, ObservationSets) else calib
    # About 100 denoiser calls give every layer a spread of noise levels; more only costs time
    # (at K = 100 each observation already covers the whole schedule).
    conds = conds[: max(1, 100 // max(1, steps))]
    store, absmax, unet = _record_layer_inputs(policy, conds, steps)
    if not (SMOOTH_DEFAULT if smooth is None else smooth):
        absmax = {}
    modules = dict(unet.named_modules())
    errors: dict[str, float] = {}
    with torch.inference_mode():
        for name, inputs in store.items():
            ref_mod = modules[name]
            q = _lower(ref_mod, absmax.get(name))
            num = den = 0.0
            for x in inputs:
                ref = ref_mod(x)
                num += float((q(x) - ref).pow(2).sum())
                den += float(ref.pow(2).sum())
            errors[name] = math.sqrt(num / max(den, 1e-30))
    skip = sorted(n for n, e in errors.items() if e > tol)
    return skip, absmax, errors


def denoiser_calibration_inputs(policy: Any, calib: Any, steps: int, device: torch.device):
    """(x_k, k, cond) triples along float32 trajectories: what INT8 PTQ for TensorRT calibrates on."""
    from edgedp.compile.base import FloatOut, float_unet_copy, make_loop

    conds = calib.calib if isinstance(calib, ObservationSets) else observation_sets(policy).calib
    unet = float_unet_copy(policy, device, "fp32")
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Tap(nn.Module):
        def forward(self, x, t, g):
            samples.append((x.clone(), t.clone(), g.clone()))
            return unet(x, t, g)

    loop = make_loop(policy, FloatOut(Tap()), steps, device)
    noise, _ = fixed_noise(policy, conds.shape[0], steps, seed=4321)
    with torch.inference_mode():
        for i in range(conds.shape[0]):
            loop(noise[i].to(device), conds[i: i + 1].to(device))
    return samples


# ---------------------------------------------------------------- the gate
@dataclass
class GateResult:
    rmse: float
    max_abs: float
    max_rmse: float
    max_abs_limit: float
    n: int
    source: str

    @property
    def passed(self) -> bool:
        return self.rmse <= self.max_rmse and self.max_abs <= self.max_abs_limit

    def line(self) -> str:
        verdict = "within" if self.passed else "EXCEEDS"
        return (f"action error vs float32 on {self.n} held-out {self.source} observations: "
                f"RMSE {self.rmse:.4f}, max {self.max_abs:.4f} (normalized units; {verdict} the gate "
                f"RMSE <= {self.max_rmse:g}, max <= {self.max_abs_limit:g})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def action_error(reference: Any, candidate: Any, conds: torch.Tensor, steps: int, seed: int = 777) -> tuple[float, float]:
    """RMSE and max |a - a_ref| over all held-out samples, same initial and per-step noise for both."""
    noise, vnoise = fixed_noise(reference.policy, conds.shape[0], steps, seed)
    sq = 0.0
    count = 0
    worst = 0.0
    for i in range(conds.shape[0]):
        g = conds[i: i + 1]
        v = vnoise[i] if reference.stochastic else None
        a_ref = reference(g, noise[i], v).float().cpu()
        a = candidate(g, noise[i], v).float().cpu()
        d = a - a_ref
        sq += float(d.pow(2).sum())
        count += d.numel()
        worst = max(worst, float(d.abs().max()))
    return math.sqrt(sq / max(count, 1)), worst


def accuracy_gate(reference: Any, candidate: Any, sets: ObservationSets, steps: int,
                  max_rmse: float = DEFAULT_MAX_RMSE, max_abs: float = DEFAULT_MAX_ABS) -> GateResult:
    rmse, worst = action_error(reference, candidate, sets.heldout, steps)
    return GateResult(rmse, worst, max_rmse, max_abs, int(sets.heldout.shape[0]), sets.source)
