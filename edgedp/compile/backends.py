"""Backends behind the one sampler interface: eager, inductor, cpu-int8, onnxruntime, tensorrt.

Each backend says whether it can run here (``unavailable(device)`` returns the reason, or None),
builds a CompiledSampler, writes whatever it needs to reload quickly into a cache entry directory,
and reloads from it.  Nothing here decides *whether* to rebuild: that is cache.py's job.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgedp.compile.base import CompiledSampler, FloatOut, float_unet_copy, make_loop
from firmware_bridge.atomic_file import atomic_path

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def cuda_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "this machine has no CUDA device (torch reports none)"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"cuda:{device.index} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)"
    return None


class Backend:
    name = ""
    precisions: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Bumped whenever what a backend writes or how it quantizes changes: part of the cache key,
    # so entries built by older code become stale instead of silently loading.
    revision = 1

    def unavailable(self, device: torch.device) -> str | None:
        if device.type not in self.devices:
            return f"backend {self.name} runs on {' or '.join(self.devices)}, not {device}"
        return cuda_reason(device)

    def library_versions(self) -> dict[str, str]:
        from edgedp import __version__

        return {"torch": torch.__version__, "edgedp": __version__, f"{self.name}-revision": str(self.revision)}

    def build(self, policy: Any, precision: str, steps: int, device: torch.device, entry: Path,
              calib: Any = None, progress: Progress = _noop) -> CompiledSampler:
        raise NotImplementedError

    def load(self, policy: Any, precision: str, steps: int, device: torch.device, entry: Path,
             progress: Progress = _noop) -> CompiledSampler:
        """Default: the backend keeps nothing that is slower to load than to build."""
        return self.build(policy, precision, steps, device, entry, None, progress)


def _bytes(module: nn.Module) -> int:
    from edgedp.compile.int8 import weight_bytes

    return weight_bytes(module)


class EagerBackend(Backend):
    """Plain PyTorch at the requested precision: the baseline, and the fallback on any device."""

    name = "eager"
    precisions = ("fp32", "fp16", "bf16")

    def unavailable(self, device: torch.device) -> str | None:
        return cuda_reason(device)

    def build(self, policy, precision, steps, device, entry, calib=None, progress=_noop):
        unet = float_unet_copy(policy, device, precision)
        den = FloatOut(unet)
        return CompiledSampler(self.name, precision, steps, device, policy, make_loop(policy, den, steps, device),
                               den, weight_bytes=_bytes(unet))


class _Contiguous(nn.Module):
    """Hands the compiled graph the same memory layout every call.

    The sampler passes the timestep as ``timesteps[i].expand(B)`` (stride 0); dynamo guards on
    strides, so without this the warm-up graph is thrown away and recompiled mid-run.
    """

    def __init__(self, inner: Callable[..., torch.Tensor]):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous(), t.contiguous(), cond.contiguous())


class InductorBackend(Backend):
    """torch.compile (inductor) of one denoiser call; the K-step loop stays a short Python loop.

    Compiling the unrolled K-step graph would make compile time grow with K (K = 100 is 100 U-Net
    copies) for no speed gain on CPU, where per-call overhead is microseconds against a
    millisecond-scale step.  Inductor's own on-disk cache lives inside the cache entry, so a
    reload skips code generation.  On CPU, weight freezing lets inductor prepack weights for
    oneDNN, which is what makes it faster than eager at all.
    """

    name = "inductor"
    precisions = ("fp32", "fp16", "bf16")

    def _compile(self, policy, precision, steps, device, entry: Path, progress) -> CompiledSampler:
        import torch._inductor.config as inductor_config

        (entry / "inductor").mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((entry / "inductor").resolve())
        inductor_config.freezing = True
        unet = float_unet_copy(policy, device, precision)
        den = FloatOut(unet)
        import torch._dynamo.config as dynamo_config

        # One compiled graph per sampler; several samplers (K values, backends) live in one process.
        dynamo_config.recompile_limit = max(int(getattr(dynamo_config, "recompile_limit", 8)), 64)
        compiled = _Contiguous(torch.compile(den, dynamic=False))
        progress("compiling the denoiser with inductor (first call)")
        x = torch.zeros((1, policy.horizon, policy.action_dim), device=device)
        t = torch.zeros((1,), dtype=torch.long, device=device)
        g = torch.zeros((1, policy.global_cond_dim), device=device)
        with torch.inference_mode():
            compiled(x, t, g)
        return CompiledSampler(self.name, precision, steps, device, policy,
                               make_loop(policy, compiled, steps, device), compiled, weight_bytes=_bytes(unet))

    def build(self, policy, precision, steps, device, entry, calib=None, progress=_noop):
        return self._compile(policy, precision, steps, device, entry, progress)

    def load(self, policy, precision, steps, device, entry, progress=_noop):
        return self._compile(policy, precision, steps, device, entry, progress)


class CpuInt8Backend(Backend):
    """INT8 weights (per output channel) with dynamically quantized activations, on the CPU.

    The fastest path measured on this machine at batch 1 (see docs/compile.md): the step is
    weight-streaming bound, and int8 reads a quarter of float32's bytes with VNNI dot products.
    Layers that calibration finds too sensitive stay float32 (listed in the manifest).
    """

    name = "cpu-int8"
    precisions = ("int8",)
    devices = ("cpu",)
    revision = 3  # 2: activation smoothing + clipped weight ranges; 3: measured thread count

    def unavailable(self, device):
        reason = super().unavailable(device)
        if reason:
            return reason
        from edgedp.compile.int8 import quant_engine_available

        if not quant_engine_available():
            return "this torch build has no quantized engine (fbgemm/x86/qnnpack) for int8 GEMM"
        return None

    def _assemble(self, policy, steps, device, skip: list[str],
                  absmax: dict | None = None) -> tuple[nn.Module, CompiledSampler]:
        from edgedp.compile.int8 import quantize_module

        unet = float_unet_copy(policy, device, "fp32")
        quantize_module(unet, skip=skip, act_absmax=absmax)
        den = FloatOut(unet)
        cs = CompiledSampler(self.name, "int8", steps, device, policy, make_loop(policy, den, steps, device), den,
                             weight_bytes=_bytes(unet), info={"float_layers": list(skip)})
        return unet, cs

    def build(self, policy, precision, steps, device, entry, calib=None, progress=_noop):
        from safetensors.torch import save_file

        skip: list[str] = []
        absmax: dict = {}
        if calib is not None:
            from edgedp.compile.quantize import calibrate_int8

            progress("calibrating: activation ranges and per-layer int8 error")
            skip, absmax, _errors = calibrate_int8(policy, calib, steps)
        unet, cs = self._assemble(policy, steps, device, skip, absmax)
        if absmax:
            # Smoothing helps some networks and hurts others (measured both ways): keep whichever
            # variant gives the smaller action error on the *calibration* observations.
            progress("calibrating: with and without activation smoothing")
            plain_unet, plain = self._assemble(policy, steps, device, skip, None)
            e_smooth, e_plain = _calib_action_error(policy, calib, [cs, plain], steps, device)
            cs.info["calib_rmse"] = {"smoothed": e_smooth, "plain": e_plain}
            if e_plain <= e_smooth:
                plain.info["calib_rmse"] = cs.info["calib_rmse"]
                unet, cs, absmax = plain_unet, plain, {}
        cs.info["smoothed_layers"] = len(absmax)
        self._tune_threads(policy, cs, progress)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "threads.json").write_text(json.dumps({"threads": cs.threads, "step_ms": cs.info["threads_ms"]}))
        entry.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in unet.state_dict().items()}
        with atomic_path(entry / "denoiser_int8.safetensors", suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp))
        (entry / "int8_layers.json").write_text(json.dumps({"float_layers": skip}))
        return cs

    @staticmethod
    def _tune_threads(policy, cs: CompiledSampler, progress) -> None:
        from edgedp.compile.base import fastest_threads

        progress("timing one step with each thread count")
        x = torch.zeros((1, policy.horizon, policy.action_dim))
        t = torch.full((1,), 1, dtype=torch.long)
        g = torch.zeros((1, policy.global_cond_dim))
        with torch.inference_mode():
            best, med = fastest_threads(lambda: cs.denoiser(x, t, g))
        cs.threads = best
        cs.info["threads_ms"] = {str(k): round(v, 3) for k, v in med.items()}

    def load(self, policy, precision, steps, device, entry, progress=_noop):
        from safetensors.torch import load_file

        skip = json.loads((entry / "int8_layers.json").read_text())["float_layers"]
        unet, cs = self._assemble(policy, steps, device, skip)
        if (entry / "threads.json").is_file():
            cs.threads = json.loads((entry / "threads.json").read_text())["threads"]
        unet.load_state_dict(load_file(str(entry / "denoiser_int8.safetensors")), strict=True)
        from edgedp.compile.int8 import Int8Gemm

        for m in unet.modules():
            if isinstance(m, Int8Gemm):
                m.pack()
        return cs


def _calib_action_error(policy, calib, candidates, steps: int, device, n: int = 2) -> list[float]:
    """Action RMSE of each candidate against float32 on (at most n) calibration observations.

    Judged with at most 10 steps of the same scheduler when K is larger: the choice it informs
    (smoothing or not) does not depend on K, and at K = 100 a float32 reference costs minutes.
    """
    from edgedp.compile.quantize import action_error

    k_eval = min(steps, 10)
    try:
        make_loop(policy, FloatOut(policy.denoiser), k_eval, device)
    except ValueError:
        k_eval = steps
    conds = calib.calib[:n]
    ref = EagerBackend().build(policy, "fp32", k_eval, device, Path("."))
    out = []
    for cs in candidates:
        probe = CompiledSampler(cs.backend, cs.precision, k_eval, device, policy,
                                make_loop(policy, cs.denoiser, k_eval, device), cs.denoiser)
        out.append(action_error(ref, probe, conds, k_eval, seed=31)[0])
    return out


def _registry() -> dict[str, Backend]:
    from edgedp.compile.onnx import OnnxRuntimeBackend
    from edgedp.compile.ort_loop import OrtLoopBackend
    from edgedp.compile.tensorrt import TensorRTBackend

    backends: list[Backend] = [EagerBackend(), InductorBackend(), CpuInt8Backend(), OnnxRuntimeBackend(),
                               OrtLoopBackend(), TensorRTBackend()]
    return {b.name: b for b in backends}


BACKENDS: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    from edgedp.errors import UserError

    if not BACKENDS:
        BACKENDS.update(_registry())
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}' (allowed: {', '.join(BACKENDS)})")
    return BACKENDS[name]


def all_backends() -> dict[str, Backend]:
    if not BACKENDS:
        BACKENDS.update(_registry())
    return dict(BACKENDS)
