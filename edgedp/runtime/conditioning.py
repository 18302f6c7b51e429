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
* only knots the previous chunk really published are decided: its executed slice and the ``lookahead``
  knots after it (with inpainting the planner publishes MARGIN of the chunk's predicted actions past the
  executed slice; the servo uses them for the tangents at the slice's last knots and never executes them),
  so n_fixed is capped at the executed slice + lookahead. When inference outlasts the slice the arm stops at
  its end (the servo holds, then fades into the new chunk), and the steps after the lookahead knots are the
  new chunk's to choose; were they fixed to a hold, a slow planner would never move the arm again. The
  overlap (guided form) covers the indices the previous chunk still predicts (``overlap="soft"``, RTC's soft
  tail), or only the decided ones (``overlap="none"``, safety.inpaint_overlap): on a contact-rich task the tail
  makes each plan follow its predecessor's stale predictions past the switch.

The first chunk has nothing to agree with: it gets n_fixed = n_overlap = 0 (same graph, no effect) and no
warm start (the sampler runs its full K steps from noise).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from edgedp.config import INPAINT_OVERLAPS
from models.inpainting import shift_chunk


class ChunkConditioner:
    # Decided steps past the switch: the servo's cubic (Catmull-Rom) segment around the switch reads the
    # knots one before and two after it, so those must agree too (linear needs one).
    MARGIN = 2

    def __init__(self, policy: Any, action_period: float, first: int, n_action_steps: int, warm: bool,
                 inpaint: bool, overlap: str = "soft"):
        if overlap not in INPAINT_OVERLAPS:  # safety.inpaint_overlap's values: soft tail, or none
            raise ValueError(f"inpaint overlap '{overlap}' is not one of {', '.join(INPAINT_OVERLAPS)}")
        self.policy = policy
        self.overlap = overlap
        self.dt = float(action_period)
        self.first = int(first)
        self.ta = int(n_action_steps)
        self.warm = bool(warm)
        self.inpaint = bool(inpaint)
        # Knots the planner publishes past the executed slice (asynchronous mode): see lookahead_for.
        self.lookahead = self.lookahead_for(policy, first, n_action_steps) if inpaint else 0
        # (raw actions (T, A), t0 of index `first`, lookahead knots published with it)
        self._prev: Optional[tuple[np.ndarray, float, int]] = None
        self.last_n_fixed = 0

    @classmethod
    def lookahead_for(cls, policy: Any, first: int, n_action_steps: int) -> int:
        """How many predicted actions past the executed slice an inpainting planner publishes: MARGIN, or fewer
        when the horizon ends sooner; 0 without inpainting (crossfade and ensemble chunks are unchanged).

        Why MARGIN: the new chunk decides up to MARGIN knots past the switch, and a switch late in the old
        slice needs them to be old knots; the servo's tangent at the last executed knot reads the first."""
        options = getattr(policy, "sampler_options", None) or {}
        if "inpaint" not in options:
            return 0
        return max(0, min(cls.MARGIN, int(policy.horizon) - int(first) - int(n_action_steps)))

    @classmethod
    def for_policy(cls, policy: Any, action_period: float, first: int, n_action_steps: int,
                   overlap: str = "soft") -> Optional["ChunkConditioner"]:
        """One when the policy's sampler was configured for warm start or inpainting (configure_sampler), else None.
        ``overlap``: safety.inpaint_overlap (see decided)."""
        options = getattr(policy, "sampler_options", None) or {}
        warm, inpaint = "warm_start_level" in options, "inpaint" in options
        if not (warm or inpaint):
            return None
        return cls(policy, action_period, first, n_action_steps, warm, inpaint, overlap)

    @property
    def replan_advance(self) -> float:
        """How much earlier (s) the planner starts the next chunk with inpainting: (MARGIN + 1 - lookahead) action
        periods, i.e. one period with the MARGIN lookahead knots published (three without any).

        Why: the asynchronous planner times each chunk to arrive by the last executed knot t_E of the previous
        one (expected latency = 1.2 x the largest recent latency + a margin, so it usually arrives earlier).
        The switch must land inside the old executed slice, and the cubic segment it lands in reads one knot
        before and two after, which must be knots of both chunks: decided in the new one (n_fixed is capped
        at the old slice + lookahead) and present in the old one (its tangents two-sided). With the MARGIN
        lookahead knots that holds for every switch up to t_E, so the decided knots need no advance. One
        period is still needed for the new chunk's own first segment (joins.Deferred): a chunk that arrives
        inside it is switched to at its second knot, t0_new + dt, and the old plan must still run then. t0_new
        is the observation time + action lead - command delay, snapped to the old grid (up to half a period
        later): with no advance and a fast planner it can be t_E itself, and that switch would come a period
        after the old plan ended (the servo would brake, and the join check fall back to a cross-fade). With
        the planner starting on time, t0_new + dt <= t_E holds whenever expected latency + advance + command
        delay - action lead > dt / 2: with one period of advance always without an action lead, and with a
        one-period lead (Push-T) once the expected latency exceeds half a period (inference above ~25 ms at
        10 Hz). The period also gives a chunk that comes later than expected some slack before the arm stops.
        Without lookahead (a horizon that ends with the executed slice) the switch's segment must also end a
        knot before t_E and the old last tangent is one-sided: MARGIN + 1 periods, as before lookahead.
        Each period of advance is one step fewer executed per chunk (more frequent planning)."""
        return (self.MARGIN + 1 - self.lookahead) * self.dt if self.inpaint else 0.0

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

    def remember(self, actions: np.ndarray, t0: float, lookahead: int = 0) -> None:
        """The chunk just published: full horizon in raw units, index `first` at time t0, with `lookahead` knots
        published past its executed slice (the next chunk may decide those too)."""
        self._prev = (np.array(actions, dtype=np.float64, copy=True), float(t0), int(lookahead))

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
        prev, t0_prev, _ = self._prev
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
        """(n_fixed, n_overlap) on the new grid; see the module docstring. With overlap "none" n_overlap is n_fixed:
        the sampler's guidance weights (models/inpainting.overlap_weights) then have no soft tail."""
        d = max(0, math.ceil((t_switch - t0_new) / self.dt - 1e-9))
        covered = math.floor(horizon - 1 - shift + 1e-9) + 1   # new indices the previous chunk still predicts
        executed = math.floor(self.first + self.ta - 1 - shift + 1e-9) + 1  # ... and the ones it executes
        published = executed + (self._prev[2] if self._prev is not None else 0)  # ... and its lookahead knots
        n_fixed = max(0, min(self.first + d + self.MARGIN, published, covered, horizon))
        n_overlap = max(n_fixed, min(covered, horizon)) if self.overlap == "soft" else n_fixed
        return int(n_fixed), int(n_overlap)

    def _normalize(self, raw: np.ndarray):
        import torch

        policy = self.policy
        x = torch.as_tensor(raw, dtype=torch.float32)[None]
        with torch.inference_mode():
            norm = policy.normalizers[policy.spec.action_key](x.to(policy.device, policy.dtype))
        return norm.to("cpu", torch.float32)
