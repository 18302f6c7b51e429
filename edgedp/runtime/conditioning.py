"""The planner's side of warm start and real-time inpainting: the previous chunk, re-timed for the next one.

The sampler (models/sampler.py) only sees tensors: ``init`` (warm start) and ``prefix`` / ``n_fixed`` /
``n_overlap`` (inpainting), all on the new chunk's index grid in normalized units. This module makes them
from the last published chunk and the planner's clock:

* the new chunk's index j is the time t0_new + (j - first) dt, with t0_new put on the previous chunk's grid
  (``snap``); the previous chunk is shifted by whole steps (``shift_chunk``, its last action repeated past
  its end);
* decided indices: everything up to the switch time t_switch = plan start + expected latency, plus a
  margin of two (the servo interpolates between grid points; its cubic segment around the switch reads
  the knots one before and two after): n_fixed = first + ceil((t_switch - t0_new) / dt) + 2;
* only what the previous chunk really executes is decided: never past its published slice. When inference
  outlasts that slice the arm stops at its end (the servo holds, then fades into the new chunk), so the
  steps after it are the new chunk's to choose; were they fixed to a hold, a slow planner would never move
  the arm again. The overlap (guided form) covers the indices the previous chunk still predicts.

The first chunk has nothing to agree with: it gets n_fixed = n_overlap = 0 (same graph, no effect) and no
warm start (the sampler runs its full K steps from noise).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from models.inpainting import shift_chunk


class ChunkConditioner:
    # Decided steps past the switch: the servo's cubic (Catmull-Rom) segment around the switch reads the
    # knots one before and two after it, so those must agree too (linear needs one).
    MARGIN = 2

    def __init__(self, policy: Any, action_period: float, first: int, n_action_steps: int, warm: bool,
                 inpaint: bool):
        self.policy = policy
        self.dt = float(action_period)
        self.first = int(first)
        self.ta = int(n_action_steps)
        self.warm = bool(warm)
        self.inpaint = bool(inpaint)
        self._prev: Optional[tuple[np.ndarray, float]] = None  # (raw actions (T, A), t0 of index `first`)
        self.last_n_fixed = 0

    @classmethod
    def for_policy(cls, policy: Any, action_period: float, first: int, n_action_steps: int) -> Optional["ChunkConditioner"]:
        """One when the policy's sampler was configured for warm start or inpainting (configure_sampler), else None."""
        options = getattr(policy, "sampler_options", None) or {}
        warm, inpaint = "warm_start_level" in options, "inpaint" in options
        if not (warm or inpaint):
            return None
        return cls(policy, action_period, first, n_action_steps, warm, inpaint)

    @property
    def replan_advance(self) -> float:
        """How much earlier (s) the planner starts the next chunk with inpainting: MARGIN + 1 action periods.

        Why: the asynchronous planner times each chunk to arrive just before the previous executed slice ends,
        but only that slice can be decided, and the servo's cubic segment at the switch reads two knots past
        it, which do not exist in the old chunk (its last knots have one-sided tangents, and the new chunk's
        knots there are free). Arriving MARGIN + 1 periods before the end puts the switch, its margin and the
        segment's knots inside the slice both chunks agree on. The cost: each chunk executes that many steps
        fewer before the next one replaces it."""
        return (self.MARGIN + 1) * self.dt if self.inpaint else 0.0

    def snap(self, t0: float) -> float:
        """The new chunk's time grid put on the previous chunk's (nearest grid time to t0).

        Why: the decided steps must be the previous chunk's own knots. On a grid offset by a fraction of a
        period, the new interpolant through points of the old one still differs from it between knots,
        and one servo period after the switch that difference is a velocity jump. Moving "now" to the
        nearest action time shifts the plan by at most half a period (the camera frame is up to a frame
        period old anyway).
        """
        if self._prev is None:
            return t0
        t0_prev = self._prev[1]
        return t0_prev + round((t0 - t0_prev) / self.dt) * self.dt

    def remember(self, actions: np.ndarray, t0: float) -> None:
        """The chunk just published: full horizon in raw units, index `first` at time t0."""
        self._prev = (np.array(actions, dtype=np.float64, copy=True), float(t0))

    def inputs(self, t0_new: float, t_switch: float) -> dict[str, Any]:
        """Keyword tensors for the sampler call that plans the chunk whose index `first` is at t0_new."""
        import torch

        horizon, dim = self.policy.horizon, self.policy.action_dim
        out: dict[str, Any] = {}
        if self._prev is None:
            if self.inpaint:
                out["prefix"] = torch.zeros((1, horizon, dim))
                out["n_fixed"] = torch.zeros((1,), dtype=torch.int64)
                out["n_overlap"] = torch.zeros((1,), dtype=torch.int64)
            self.last_n_fixed = 0
            return out
        prev, t0_prev = self._prev
        shift = (t0_new - t0_prev) / self.dt
        aligned = shift_chunk(prev, shift)
        norm = self._normalize(aligned)
        if self.warm:
            out["init"] = norm
        if self.inpaint:
            n_fixed, n_overlap = self.decided(shift, t0_new, t_switch, prev.shape[0])
            out["prefix"] = norm
            out["n_fixed"] = torch.tensor([n_fixed], dtype=torch.int64)
            out["n_overlap"] = torch.tensor([n_overlap], dtype=torch.int64)
            self.last_n_fixed = n_fixed
        return out

    def decided(self, shift: float, t0_new: float, t_switch: float, horizon: int) -> tuple[int, int]:
        """(n_fixed, n_overlap) on the new grid; see the module docstring."""
        d = max(0, math.ceil((t_switch - t0_new) / self.dt - 1e-9))
        covered = math.floor(horizon - 1 - shift + 1e-9) + 1   # new indices the previous chunk still predicts
        executed = math.floor(self.first + self.ta - 1 - shift + 1e-9) + 1  # ... and the ones it executes
        n_fixed = max(0, min(self.first + d + self.MARGIN, executed, horizon))
        n_overlap = max(n_fixed, min(covered, horizon))
        return int(n_fixed), int(n_overlap)

    def _normalize(self, raw: np.ndarray):
        import torch

        policy = self.policy
        x = torch.as_tensor(raw, dtype=torch.float32)[None]
        with torch.inference_mode():
            norm = policy.normalizers[policy.spec.action_key](x.to(policy.device, policy.dtype))
        return norm.to("cpu", torch.float32)
