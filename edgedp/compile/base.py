"""The one sampler interface every backend returns, plus the pieces backends share.

A compiled sampler is the DESIGN.md "sampler backend": a callable
``(global_cond (B,D), initial noise (B,T,A)) -> normalized actions (B,T,A)`` with fixed shapes
and a fixed K.  It also exposes ``encode`` (once per chunk) and ``step`` (one denoiser call) so the
benchmark can time the stages separately with exactly the code the runtime runs.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cast_inputs_to_weights(model: nn.Module) -> nn.Module:
    """Make a half/bf16 copy of the U-Net callable with float32 inputs.

    The U-Net builds its timestep embedding in float32 and concatenates it with the condition,
    so a plain ``.to(bf16)`` breaks at the first Linear.  A pre-hook on every weighted layer
    casts its input to the layer's weight dtype instead; it costs one small cast per layer.
    """

    def hook(mod: nn.Module, args: tuple) -> tuple:
        w = mod.weight
        return tuple(a.to(w.dtype) if torch.is_tensor(a) and a.is_floating_point() and a.dtype != w.dtype else a
                     for a in args)

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear, nn.GroupNorm)) and getattr(m, "weight", None) is not None:
            m.register_forward_pre_hook(hook)
    return model


class FloatOut(nn.Module):
    """Denoiser wrapper: whatever the inner precision, the scheduler arithmetic sees float32."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.inner(x, t, cond).float()


def float_unet_copy(policy: Any, device: torch.device, precision: str) -> nn.Module:
    """A private copy of the policy's denoiser (U-Net or transformer) on `device` in `precision`, eval mode.

    A transformer's packed q/k/v projections become Linear layers in the copy, so that int8 lowering
    (cpu-int8, ModelOpt for TensorRT) and per-layer calibration see them like every other GEMM."""
    unet = copy.deepcopy(policy.denoiser).to(device=device, dtype=torch.float32).eval()
    if hasattr(unet, "split_in_projections"):
        unet.split_in_projections()
    for p in unet.parameters():
        p.requires_grad_(False)
    if precision in ("fp16", "bf16"):
        unet = cast_inputs_to_weights(unet.to(DTYPES[precision]))
    return unet


def make_loop(policy: Any, denoiser: nn.Module, steps: int, device: torch.device) -> nn.Module:
    """The K-step loop (models.sampler.Sampler) over `denoiser`: the same scheduler tables as the policy."""
    from models.sampler import Sampler

    options = dict(getattr(policy, "sampler_options", {}))  # warm start / inpainting form (configure_sampler)
    return Sampler(denoiser, policy.scheduler_spec, steps, **options).to(device).eval()


@contextlib.contextmanager
def use_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore: the setting is process-wide in torch."""
    if not n or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fastest_threads(fn: Callable[[], Any], repeats: int = 5) -> tuple[int, dict[int, float]]:
    """Time `fn` with 1..torch.get_num_threads() threads (interleaved) and return the fastest count.

    Why: a batch-1 step is ~150 short GEMMs, each a parallel region; when another process holds
    a core (the servo loop, the camera threads, a neighbour) every region waits a scheduler tick
    for the descheduled thread.  Measured on a loaded 2-core VM: int8 step 24 ms on 1 thread,
    190 ms on 2.  On an idle machine all threads win, so this is measured, not assumed.
    """
    import time

    counts = list(range(1, max(1, torch.get_num_threads()) + 1))
    times: dict[int, list[float]] = {c: [] for c in counts}
    for c in counts:
        with use_threads(c):
            fn()
    for _ in range(repeats):
        for c in counts:
            with use_threads(c):
                t0 = time.perf_counter()
                fn()
                times[c].append(time.perf_counter() - t0)
    med = {c: sorted(v)[len(v) // 2] * 1e3 for c, v in times.items()}
    return min(med, key=med.get), med


@dataclass
class CompiledSampler:
    """What every backend builds.  Inputs and outputs are float32 on `device`; actions are normalized."""

    backend: str
    precision: str
    steps: int
    device: torch.device
    policy: Any
    loop: Callable[..., torch.Tensor]            # (noise, global_cond, variance_noise) -> x0
    denoiser: Callable[..., torch.Tensor]        # (x, t, global_cond) -> eps, float32 out
    encoder: Callable[[Mapping[str, Any]], torch.Tensor] | None = None
    weight_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None                   # intra-op threads this backend runs fastest with

    def _threads(self) -> "contextlib.AbstractContextManager[None]":
        return use_threads(self.threads)

    def __call__(self, global_cond: torch.Tensor, noise: torch.Tensor,
                 variance_noise: torch.Tensor | None = None, **conditioning: Any) -> torch.Tensor:
        """``conditioning``: warm-start / inpainting tensors (init, prefix, n_fixed, n_overlap) for the loop."""
        with torch.inference_mode(), self._threads():
            g = global_cond.to(self.device, torch.float32)
            x = noise.to(self.device, torch.float32)
            v = None if variance_noise is None else variance_noise.to(self.device, torch.float32)
            if v is None and self.stochastic:
                v = torch.randn((self.steps, *x.shape), device=self.device)
            if not conditioning:
                return self.loop(x, g, v)
            cond = {k: None if t is None else t.to(self.device, torch.float32 if t.is_floating_point() else t.dtype)
                    for k, t in conditioning.items()}
            return self.loop(x, g, v, **cond)

    @property
    def stochastic(self) -> bool:
        return bool(getattr(self.policy.sampler, "needs_variance_noise", False))

    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Raw observation -> global condition (float32), through the compiled encoder when there is one."""
        if self.encoder is not None:
            with torch.inference_mode():
                return self.encoder(obs).float()
        return self.policy.encode(obs).to(self.device, torch.float32)

    def step(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._threads():
            return self.denoiser(x, t, global_cond)

    def predict_chunk(self, obs: Mapping[str, Any], noise: Any = None) -> np.ndarray:
        """(horizon, action_dim) raw-unit actions, the Policy interface, on the compiled path."""
        with torch.inference_mode():
            g = self.encode(obs)
            x = self.policy.random_noise(1) if noise is None else self.policy.prepare_noise(noise)
            naction = self(g, x.float())
            action = self.policy.unnormalize_action(naction.to(self.policy.device, self.policy.dtype))
            return action[0].to("cpu", torch.float32).numpy().copy()


class EncoderFromPrepared(nn.Module):
    """normalize + encode on already-prepared float tensors (what policy.encode does after prepare_obs): the part
    of the observation path a backend exports or builds an engine for (onnxruntime-loop, TensorRT)."""

    def __init__(self, policy: Any, keys: list[str]):
        super().__init__()
        self.normalizers = policy.normalizers
        self.obs_encoder = policy.obs_encoder
        self.keys = keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.obs_encoder({k: self.normalizers[k](t) for k, t in zip(self.keys, tensors)})
