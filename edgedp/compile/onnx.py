"""onnxruntime backend: the denoiser exported to ONNX, run by onnxruntime's CPU (or CUDA) provider.

A measured candidate for the fast CPU path (see docs/compile.md for why cpu-int8 won here).
``int8`` uses onnxruntime's dynamic quantization (per-channel int8 weights, activations quantized
at run time: ConvInteger / MatMulInteger); ``fp32`` runs the exported graph as is.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedp.compile.backends import Backend, _noop
from edgedp.compile.base import CompiledSampler, FloatOut, float_unet_copy, make_loop
from firmware_bridge.atomic_file import atomic_path


class OrtDenoiser(nn.Module):
    """(x, t, cond) tensors in, eps tensor out, through an onnxruntime session."""

    def __init__(self, path: Path, device: torch.device):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.device = device

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {
            "sample": x.detach().float().cpu().numpy(),
            "timestep": t.detach().to(torch.int64).cpu().numpy().reshape(-1),
            "global_cond": cond.detach().float().cpu().numpy(),
        })[0]
        return torch.from_numpy(np.asarray(out)).to(self.device)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32", "int8")

    def unavailable(self, device: torch.device) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            return "backend onnxruntime needs onnxruntime and onnx (pip install 'edgedp[onnx]')"
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "this onnxruntime build has no CUDAExecutionProvider"
        return super().unavailable(device)

    def library_versions(self) -> dict[str, str]:
        import onnxruntime

        return {**super().library_versions(), "onnxruntime": onnxruntime.__version__}

    def build(self, policy, precision, steps, device, entry: Path, calib=None, progress=_noop):
        entry.mkdir(parents=True, exist_ok=True)
        unet = float_unet_copy(policy, torch.device("cpu"), "fp32")
        x = torch.zeros((1, policy.horizon, policy.action_dim))
        t = torch.zeros((1,), dtype=torch.long)
        g = torch.zeros((1, policy.global_cond_dim))
        progress("exporting the denoiser to ONNX")
        fp32_path = entry / "denoiser.onnx"
        with atomic_path(fp32_path, suffix=".onnx") as tmp:
            torch.onnx.export(FloatOut(unet), (x, t, g), str(tmp), input_names=["sample", "timestep", "global_cond"],
                              output_names=["eps"], opset_version=17, dynamo=False)
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            progress("onnxruntime dynamic int8 quantization")
            with atomic_path(entry / "denoiser_int8.onnx", suffix=".onnx") as qtmp:
                quantize_dynamic(str(fp32_path), str(qtmp), weight_type=QuantType.QInt8, per_channel=True)
                if not _session_opens(qtmp):
                    # Older onnxruntime CPU builds (the one pip gives Python 3.10) have ConvInteger only for uint8
                    # weights; signed weights then fail at session creation, so quantize the weights unsigned.
                    progress("this onnxruntime has no int8-weight ConvInteger: quantizing weights as uint8")
                    quantize_dynamic(str(fp32_path), str(qtmp), weight_type=QuantType.QUInt8, per_channel=True)
            fp32_path.unlink()
        return self.load(policy, precision, steps, device, entry, progress)

    def load(self, policy, precision, steps, device, entry: Path, progress=_noop):
        path = entry / ("denoiser_int8.onnx" if precision == "int8" else "denoiser.onnx")
        den = OrtDenoiser(path, device)
        n_params = sum(p.numel() for p in policy.denoiser.parameters())
        nbytes = n_params * (1 if precision == "int8" else 4)
        return CompiledSampler(self.name, precision, steps, device, policy, make_loop(policy, den, steps, device),
                               den, weight_bytes=nbytes)


def _session_opens(path: Path) -> bool:
    """Whether this onnxruntime build loads the model at `path` (a CPU kernel for every node, shapes it accepts)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # NOT_IMPLEMENTED surfaces as a pybind-specific exception class
        text = str(exc)
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "ShapeInferenceError" in text:
            return False
        raise
    return True
