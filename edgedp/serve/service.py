"""The policy behind the server: one loaded policy and its compiled sampler, answering batches of requests.

Kept free of Ray so that what the server computes is the same code path a local run takes
(`DiffusionPolicy.predict_chunk` with the compiled sampler of the requested backend), and so the batching
choice can be measured without a server (benchmarks/serve_throughput.py).

Two ways to answer a batch of B requests:
- stack: one encoder call and one K-step loop over a (B, ...) batch, when the compiled sampler takes a batch
  dimension (probed once at start with B = 2; a fixed-shape batch-1 engine fails the probe);
- loop: B calls of predict_chunk, one per request (always right; requests with warm-start or inpainting
  tensors, which are per robot, always take this path).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgedp.serve.wire import WireError


@dataclass
class ServeOptions:
    """What `edgedp serve` was asked to run; the deployment rebuilds the service from these in each replica."""

    checkpoint: str
    backend: str = "eager"
    precision: str = "fp32"
    steps: Optional[int] = None
    device: str = "cpu"
    seed: int = 0
    cache_dir: Optional[str] = None
    sampler: Optional[str] = None
    warm_start_level: Optional[float] = None
    inpaint: Optional[str] = None
    timesteps: Optional[Any] = None  # policy.timesteps: a descending list or 'logsnr' (dpmsolver++/unipc)
    batch_mode: str = "auto"  # auto | stack | loop
    threads: Optional[int] = None


@dataclass
class Answer:
    actions: Optional[np.ndarray] = None
    timing: dict = field(default_factory=dict)
    batch: int = 1
    error: Optional[str] = None


class PolicyService:
    def __init__(self, opts: ServeOptions):
        import torch

        from edgedp.compile import get_compiled_sampler
        from edgedp.policy_loading import load_policy

        if opts.threads:
            torch.set_num_threads(int(opts.threads))
        self.opts = opts
        self.policy = load_policy(opts.checkpoint, opts.device, opts.steps, opts.seed)
        self.policy.configure_sampler(opts.sampler, opts.warm_start_level, opts.inpaint, timesteps=opts.timesteps)
        self.steps = opts.steps or self.policy.num_inference_steps
        self.sampler = get_compiled_sampler(self.policy, opts.backend, opts.precision, self.steps, opts.device,
                                            opts.cache_dir)
        self.encoder = self.sampler.encode if getattr(self.sampler, "encoder", None) is not None else None
        self.stacks = opts.batch_mode == "stack" or (opts.batch_mode == "auto" and self._probe_stack())

    # ---- what the robot checks before it powers anything --------------------------------------------
    def spec(self) -> dict:
        p = self.policy
        return {"horizon": p.horizon, "n_obs_steps": p.n_obs_steps, "n_action_steps": p.n_action_steps,
                "action_dim": p.action_dim, "features": {k: list(v) for k, v in p.feature_shapes.items()},
                "steps": int(self.steps), "backend": self.opts.backend, "precision": self.opts.precision,
                "sampler_options": p.sampler_options, "batch_mode": "stack" if self.stacks else "loop",
                "timesteps": p.explicit_timesteps, "sampler": p.scheduler_spec.kind}

    # ---- answering ------------------------------------------------------------------------------------
    def answer(self, items: list[dict]) -> list[Answer]:
        """One Answer per decoded request, in order; a bad request gets its own error, never its neighbours'."""
        plain = [i for i, it in enumerate(items) if not it["conditioning"]]
        out: list[Optional[Answer]] = [None] * len(items)
        if self.stacks and len(plain) > 1:
            try:
                for i, a in zip(plain, self._stacked([items[i] for i in plain])):
                    out[i] = a
            except Exception:  # shapes disagree or a bad request: answer each alone so each gets its own line
                pass
        answers = [a if a is not None else self._one(it) for a, it in zip(out, items)]
        for a in answers:  # how many requests were answered together (telemetry's server_batch)
            a.batch = max(a.batch, len(items))
        return answers

    def _one(self, item: dict) -> Answer:
        import torch

        from models.policy import PolicyInputError

        timing: dict[str, float] = {}
        try:
            cond = {k: torch.from_numpy(np.array(v)) for k, v in item["conditioning"].items()}
            actions = self.policy.predict_chunk(item["obs"], item["noise"], sampler=self.sampler,
                                                encoder=self.encoder, timing=timing, conditioning=cond)
        except (PolicyInputError, WireError, TypeError, ValueError, RuntimeError) as exc:
            return Answer(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return Answer(actions=actions, timing=timing, batch=1)

    def _stacked(self, items: list[dict]) -> list[Answer]:
        import torch

        p = self.policy
        t0 = time.perf_counter()
        with torch.inference_mode():
            obs = {k: np.stack([it["obs"][k] for it in items]) for k in items[0]["obs"]}
            g = self.sampler.encode(obs)
            t1 = time.perf_counter()
            x = torch.cat([p.random_noise(1) if it["noise"] is None else p.prepare_noise(np.array(it["noise"]))
                           for it in items]).float()
            naction = self.sampler(g, x)
            t2 = time.perf_counter()
            actions = p.unnormalize_action(naction.to(p.device, p.dtype)).to("cpu", torch.float32).numpy()
            t3 = time.perf_counter()
        timing = {"normalize": 0.0, "encode": (t1 - t0) * 1e3, "sample": (t2 - t1) * 1e3, "unnormalize": (t3 - t2) * 1e3}
        if not np.isfinite(actions).all():
            raise ValueError("non-finite actions")
        return [Answer(actions=actions[i].copy(), timing=dict(timing), batch=len(items)) for i in range(len(items))]

    def _probe_stack(self) -> bool:
        """Whether the compiled sampler takes a batch: one B = 2 call on zero observations must give two
        chunks equal to two B = 1 calls (same noise); a fixed-shape engine raises or disagrees -> loop."""
        p = self.policy
        obs = {k: np.zeros((p.n_obs_steps, *shape), dtype=np.float32) for k, shape in p.feature_shapes.items()}
        noise = np.random.default_rng(0).standard_normal((p.horizon, p.action_dim)).astype(np.float32)
        item = {"obs": obs, "noise": noise, "conditioning": {}}
        if p.stochastic:  # per-step noise drawn inside the loop: batch and single calls cannot be compared
            return False
        try:
            pair = self._stacked([item, item])
            single = self._one(item)
        except Exception:
            return False
        if single.actions is None:
            return False
        return all(np.allclose(a.actions, single.actions, rtol=1e-3, atol=1e-4) for a in pair)
