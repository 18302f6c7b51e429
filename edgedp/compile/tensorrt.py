"""TensorRT backend (torch-tensorrt dynamo path) for CUDA devices, the Jetson's fast path.

Written against torch-tensorrt's documented API (``torch_tensorrt.compile(..., ir="dynamo")``,
``torch_tensorrt.save`` / ``torch.export.load``, NVIDIA ModelOpt for INT8 PTQ) and imported
lazily: this module loads on machines without CUDA so the CLI can say why it cannot run.
Not exercised on the development machine (no GPU); its tests skip with that reason.

Layout of a cache entry: ``denoiser.ep`` (one U-Net call), ``encoder.ep`` (the observation
encoder as its own engine).  The K-step loop is replayed as one CUDA graph: the scheduler
arithmetic between engine calls is a few element-wise kernels, and capturing the loop once
removes K x (engine launch + Python) overhead from every chunk.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedp.compile import trt_versions
from edgedp.compile.backends import Backend, _noop, cuda_reason
from edgedp.compile.base import CompiledSampler, EncoderFromPrepared, FloatOut, float_unet_copy, make_loop



class CudaGraphLoop:
    """Captures ``loop(noise, cond, variance_noise)`` once into a CUDA graph and replays it.

    Static input buffers are copied into before each replay; the output buffer is cloned so
    the caller never holds memory the next replay overwrites.
    """

    def __init__(self, loop: nn.Module, noise: torch.Tensor, cond: torch.Tensor, vnoise: torch.Tensor | None):
        self.loop = loop
        self.noise = noise.clone()
        self.cond = cond.clone()
        self.vnoise = None if vnoise is None else vnoise.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside capture, as CUDA graphs require
                loop(self.noise, self.cond, self.vnoise)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = loop(self.noise, self.cond, self.vnoise)

    def __call__(self, noise: torch.Tensor, cond: torch.Tensor, vnoise: torch.Tensor | None = None,
                 **conditioning: torch.Tensor) -> torch.Tensor:
        if conditioning:
            # Warm start / inpainting inputs are not in the captured graph: the same loop (same engines), launched
            # step by step. Not run on the development machine (no GPU).
            with torch.inference_mode():
                return self.loop(noise, cond, vnoise, **conditioning)
        self.noise.copy_(noise)
        self.cond.copy_(cond)
        if self.vnoise is not None:
            if vnoise is None:
                self.vnoise.normal_()
            else:
                self.vnoise.copy_(vnoise)
        self.graph.replay()
        return self.out.clone()


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    devices = ("cuda",)

    def unavailable(self, device: torch.device) -> str | None:
        if device.type != "cuda" or not torch.cuda.is_available():
            return "backend tensorrt needs a CUDA GPU and torch-tensorrt; this machine has no CUDA device" \
                if not torch.cuda.is_available() else f"backend tensorrt runs on cuda, not {device}"
        reason = cuda_reason(device)
        if reason:
            return reason
        if importlib.util.find_spec("torch_tensorrt") is None:
            return "backend tensorrt needs torch-tensorrt (pip install 'edgedp[tensorrt]'; on Jetson use NVIDIA's wheel)"
        found = trt_versions.installed_versions()
        if found is None:
            return "backend tensorrt needs TensorRT's Python module next to torch-tensorrt"
        return trt_versions.unsupported_reason(*found)

    def library_versions(self) -> dict[str, str]:
        out = super().library_versions()
        try:
            import tensorrt  # type: ignore
            import torch_tensorrt  # type: ignore

            out.update(torch_tensorrt=torch_tensorrt.__version__, tensorrt=tensorrt.__version__)
        except ImportError:
            pass
        return out

    # ------------------------------------------------------------------ build
    def _example(self, policy: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (torch.zeros((1, policy.horizon, policy.action_dim), device=device),
                torch.zeros((1,), dtype=torch.long, device=device),
                torch.zeros((1, policy.global_cond_dim), device=device))

    def build(self, policy, precision, steps, device, entry: Path, calib=None, progress=_noop):
        import torch_tensorrt  # type: ignore

        entry.mkdir(parents=True, exist_ok=True)
        settings = self._plan(precision)
        progress(f"TensorRT {settings.note}")
        unet = float_unet_copy(policy, device, settings.cast_network_to)
        den = FloatOut(unet).eval()
        inputs = self._example(policy, device)
        if precision == "int8":
            den = self._quantize_int8(den, policy, calib, steps, device, progress)
        progress(f"building TensorRT {precision} engine for the denoiser")
        with self._export_mode(precision):
            ep = torch.export.export(den, inputs)
        trt_den = torch_tensorrt.dynamo.compile(ep, arg_inputs=list(inputs), **self._kwargs(settings))
        torch_tensorrt.save(trt_den, str(entry / "denoiser.ep"), arg_inputs=list(inputs))
        if policy.image_keys or policy.state_keys:
            progress("building TensorRT engine for the observation encoder")
            self._build_encoder(policy, device, entry, self._plan("fp16" if precision == "fp16" else "fp32"))
        return self.load(policy, precision, steps, device, entry, progress)

    @staticmethod
    def _export_mode(precision: str):
        if precision == "int8":
            from modelopt.torch.quantization.utils import export_torch_mode  # type: ignore

            return export_torch_mode()
        import contextlib

        return contextlib.nullcontext()

    def _quantize_int8(self, den: nn.Module, policy, calib, steps, device, progress) -> nn.Module:
        """INT8 PTQ with NVIDIA ModelOpt: fake-quant nodes that TensorRT turns into INT8 kernels."""
        import modelopt.torch.quantization as mtq  # type: ignore

        from edgedp.compile.quantize import denoiser_calibration_inputs

        samples = denoiser_calibration_inputs(policy, calib, steps, device)
        progress(f"calibrating INT8 on {len(samples)} denoiser inputs")

        def forward_loop(model: nn.Module) -> None:
            with torch.no_grad():
                for x, t, g in samples:
                    model(x, t, g)

        return mtq.quantize(den, mtq.INT8_DEFAULT_CFG, forward_loop)

    @staticmethod
    def _plan(precision: str) -> trt_versions.TrtPlan:
        """The build settings for the torch-tensorrt / TensorRT installed here (see trt_versions)."""
        import inspect

        import torch_tensorrt  # type: ignore

        found = trt_versions.installed_versions()
        if found is None:
            raise RuntimeError("TensorRT's Python module is not importable next to torch-tensorrt")
        params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
        names = None if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else list(params)
        return trt_versions.plan(found[0], found[1], precision, names)

    @staticmethod
    def _kwargs(settings: trt_versions.TrtPlan) -> dict[str, Any]:
        kw = dict(settings.compile_kwargs)
        if "enabled_precisions" in kw:
            kw["enabled_precisions"] = trt_versions.torch_dtypes(kw["enabled_precisions"])
        return kw

    def _build_encoder(self, policy, device, entry: Path, settings: trt_versions.TrtPlan) -> None:
        import torch_tensorrt  # type: ignore

        keys = list(policy.image_keys) + list(policy.state_keys)
        shapes = policy.feature_shapes
        # The encoder stays float32 in the graph (its spatial softmax is range-sensitive); weakly typed
        # builds may still pick fp16 kernels for the convolutions when fp16 is enabled.
        enc = EncoderFromPrepared(policy, keys).to(device).eval()
        inputs = [torch.zeros((1, policy.n_obs_steps, *shapes[k]), device=device) for k in keys]
        ep = torch.export.export(enc, tuple(inputs))
        trt_enc = torch_tensorrt.dynamo.compile(ep, arg_inputs=inputs, **self._kwargs(settings))
        torch_tensorrt.save(trt_enc, str(entry / "encoder.ep"), arg_inputs=inputs)

    # ------------------------------------------------------------------ load
    def load(self, policy, precision, steps, device, entry: Path, progress=_noop):
        import torch_tensorrt  # type: ignore  # noqa: F401  (registers the TensorRT runtime ops)

        den = torch.export.load(str(entry / "denoiser.ep")).module()
        loop = make_loop(policy, den, steps, device)
        x, _, g = self._example(policy, device)
        v = torch.zeros((steps, *x.shape), device=device) if policy.stochastic else None
        graph_loop = CudaGraphLoop(loop, x, g, v)
        encoder = None
        if (entry / "encoder.ep").exists():
            enc = torch.export.load(str(entry / "encoder.ep")).module()
            keys = list(policy.image_keys) + list(policy.state_keys)

            def run_encoder(obs, _enc=enc, _keys=keys):
                prepared = policy.prepare_obs(obs)
                return _enc(*[prepared[k].to(device) for k in _keys])

            encoder = run_encoder

        from edgedp.compile.int8 import weight_bytes

        nbytes = weight_bytes(policy.denoiser) // (2 if precision == "fp16" else 4 if precision == "int8" else 1)
        return CompiledSampler(self.name, precision, steps, device, policy, graph_loop, den, encoder,
                               weight_bytes=nbytes, info={"cuda_graph": True})
