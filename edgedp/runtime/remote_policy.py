"""RemotePolicy: the Policy interface the planner uses, answered by a policy server (edgedp serve).

The planner cannot tell it from a local policy: `predict_chunk(obs, ...)` returns the (horizon, action_dim)
chunk in raw units, and the round trip is simply the planner's measured latency, so its early start (and
inpainting, whose tensors travel with the request) work unchanged.

The board still holds the checkpoint's local policy: its spec and normalizers (inpainting normalizes the
previous chunk before sending it) and, with `fallback: local`, its compiled sampler.

Failures:
- the server does not answer within timeout_ms (gone, overloaded, network down): PolicyUnavailable. With
  fallback: none the planner publishes nothing (the servo loop holds the arm: no chunk covers now) and
  retries with backoff. With fallback: local this call, and every later one in the run, is answered by the
  local policy instead (a switch is reported once; the run does not flap back and forth).
- the server refuses a request (token, shapes): RemoteRefused, which stops the run with its one line.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

from edgedp.serve.client import PolicyClient, RemoteRefused, RemoteUnavailable  # noqa: F401 (re-exported)


class PolicyUnavailable(RuntimeError):
    """No chunk this time (the server did not answer and there is no fallback); the planner retries."""


class RemotePolicy:
    def __init__(self, client: PolicyClient, local: Any, fallback: str = "none",
                 local_sampler: Optional[Callable] = None, clock: Callable[[], float] = time.monotonic):
        if fallback not in ("none", "local"):
            raise ValueError(f"fallback must be none or local, got {fallback!r}")
        if fallback == "local" and local_sampler is None:
            raise ValueError("fallback: local needs the local compiled sampler")
        self.client = client
        self.local = local
        self.fallback = fallback
        self.local_sampler = local_sampler
        self.clock = clock
        self.source = "remote"  # remote | local (after a fallback)
        self.failures = 0
        self._events: list[dict] = []

    # ---- the Policy interface's attributes, from the checkpoint the board holds -----------------------
    def __getattr__(self, name: str) -> Any:
        # spec, horizon, n_obs_steps, n_action_steps, action_dim, normalizers, device, dtype, sampler_options,
        # feature_shapes, ...: the served policy was checked to match them at start (edgedp.app.validate).
        if name.startswith("_") or name in ("local",):
            raise AttributeError(name)
        return getattr(self.local, name)

    @property
    def config(self) -> dict:
        """What the run summary shows (never the token)."""
        return {"url": self.client.url, "timeout_ms": round(self.client.timeout_s * 1e3, 3), "fallback": self.fallback}

    def take_events(self) -> list[dict]:
        """Fault events since the last call (for telemetry): {t, event, detail}."""
        out, self._events = self._events, []
        return out

    def _event(self, event: str, detail: str) -> None:
        self._events.append({"t": self.clock(), "event": event, "detail": detail})

    # ---- the one observation -> chunk path ------------------------------------------------------------
    def predict_chunk(self, obs: Mapping[str, Any], noise: Any = None, *, sampler: Any = None, encoder: Any = None,
                      timing: Optional[dict] = None, conditioning: Optional[Mapping[str, Any]] = None) -> np.ndarray:
        """`sampler` and `encoder` are the planner's local ones; the server runs its own compiled sampler."""
        if self.source == "local":
            return self._local(obs, noise, timing, conditioning)
        t0 = time.perf_counter()
        try:
            reply = self.client.predict(obs, noise, conditioning)
        except RemoteUnavailable as exc:
            self.failures += 1
            self._event("remote_unavailable", str(exc))
            if self.fallback != "local":
                raise PolicyUnavailable(str(exc)) from None
            self.source = "local"
            self._event("fallback_local", "switched to the local policy for the rest of the run")
            return self._local(obs, noise, timing, conditioning)
        actions = reply["actions"]
        want = (self.local.horizon, self.local.action_dim)
        if actions.shape != want or not np.isfinite(actions).all():
            raise RemoteRefused(f"{self.client.url}: reply actions of shape {actions.shape} (want {want}) or non-finite")
        if timing is not None:
            timing.update(reply["timing"])
            timing["round_trip"] = (time.perf_counter() - t0) * 1e3
            timing["server_batch"] = float(reply["batch"])
        return np.array(actions, dtype=np.float32)

    def _local(self, obs, noise, timing, conditioning) -> np.ndarray:
        s = self.local_sampler
        encoder = s.encode if getattr(s, "encoder", None) is not None else None
        return self.local.predict_chunk(obs, noise, sampler=s, encoder=encoder, timing=timing,
                                        conditioning=conditioning)
