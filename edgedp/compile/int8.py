"""INT8-weight layers for the CPU: every Conv1d, ConvTranspose1d and Linear becomes one int8 GEMM.

Why this shape of solution: at batch 1 and horizon 16 one denoising step multiplies a handful of
activation rows (T = 16, 8, 4 at the U-Net levels) by ~250 M weights, so the step is bound by how
fast the weights stream from memory, not by arithmetic.  Storing weights as int8 cuts the bytes per
step by 4x against float32, and the fbgemm/oneDNN dynamic-quantized GEMM (activations quantized
per call, weights per output channel, VNNI dot products where the CPU has them) reads those bytes
at close to the machine's measured bandwidth.  A convolution with kernel k is rewritten as
im2col (pad + unfold, cheap at these sizes) followed by that GEMM over the (C_in * k) axis; a
transposed convolution is a GEMM to (C_out * k) per input step followed by an overlap-add (fold).

GroupNorm, Mish, the sinusoidal embedding and the residual adds stay in float32: they hold no
meaningful weight bytes and are where quantization error would hurt most.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

import os
REDUCE_RANGE = os.environ.get("EDGEDP_INT8_REDUCE_RANGE", "0") == "1"
QUANT_TYPES = (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)


def quant_engine_available() -> bool:
    """True when this torch build has a dynamic int8 linear kernel for this CPU."""
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


def _select_engine() -> None:
    """x86/fbgemm on Intel/AMD (VNNI), qnnpack on ARM (the Jetson's dot-product int8)."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack", "onednn"):
        if name in engines:
            if torch.backends.quantized.engine != name:
                torch.backends.quantized.engine = name
            return


CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def quantize_rows(w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: returns (int8 weight (N,K), float32 scales (N,)).

    Each row's range is clipped to whichever of CLIP_RATIOS x max|w| gives the least squared
    error: for bell-shaped weights a slightly clipped range rounds the bulk of values more finely
    than the lone extremes cost, measured to lower the action error.
    """
    w2d = w2d.detach().float()
    amax = w2d.abs().amax(dim=1).clamp_min(1e-12)
    best_err = torch.full_like(amax, float("inf"))
    best_scale = amax / 127.0
    for r in CLIP_RATIOS:
        scale = amax * r / 127.0
        deq = torch.clamp(torch.round(w2d / scale[:, None]), -127, 127) * scale[:, None]
        err = (deq - w2d).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    q = torch.clamp(torch.round(w2d / best_scale[:, None]), -127, 127).to(torch.int8)
    return q, best_scale


class Int8Gemm(nn.Module):
    """y = x @ W^T + b with W stored as per-row int8, run through the dynamic-quantized GEMM kernel.

    The raw int8 weight and scales are kept as buffers so the layer can be saved and reloaded
    (the kernel's packed form is rebuilt on load; packing takes milliseconds).
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.out_features, self.in_features = qweight.shape
        self._packed = None

    def pack(self) -> None:
        _select_engine()
        n = self.qweight.shape[0]
        with warnings.catch_warnings():
            # torch marks quantized *tensor* creation deprecated; the packed GEMM op is what we use.
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(
                self.qweight, self.scale.double(), torch.zeros(n, dtype=torch.long), 0
            )
            self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: D401 - torch hook
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None

    def forward(self, x2d: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self.pack()
        # Full 8-bit activations: measured to halve the per-layer error against 7-bit
        # (reduce_range); VNNI/ARM dot-product kernels accumulate in int32 and cannot saturate.
        # EDGEDP_INT8_REDUCE_RANGE=1 restores 7 bits for AVX2-only CPUs (int16 accumulation).
        return torch.ops.quantized.linear_dynamic(x2d.contiguous(), self._packed, REDUCE_RANGE)

    @property
    def weight_bytes(self) -> int:
        extra = self.scale.numel() * 4 + (0 if self.bias is None else self.bias.numel() * 4)
        return self.qweight.numel() + extra


def smoothing(act_absmax: torch.Tensor | None, w_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per-input-channel factors s that move activation range into the weights (SmoothQuant).

    Activations are quantized with one range per call, so a few loud channels coarsen every
    other channel's steps; dividing channel c by s_c and multiplying the weights that read it
    by s_c leaves the product unchanged and evens the ranges out.  s = a^alpha / w^(1-alpha),
    from activation maxima seen on calibration data.
    """
    if act_absmax is None:
        return torch.ones_like(w_absmax)
    s = act_absmax.float().clamp_min(1e-5).pow(alpha) / w_absmax.float().clamp_min(1e-5).pow(1 - alpha)
    s = s / s.log().mean().exp()  # geometric mean 1: keeps magnitudes where they were
    return s.clamp(1e-2, 1e2)


class _Smoothed(nn.Module):
    """Holds 1/s per input channel; the multiply is skipped when no smoothing was calibrated."""

    def _set_smoothing(self, s: torch.Tensor) -> None:
        self.register_buffer("inv_smooth", (1.0 / s).float().contiguous())
        self.smoothed = bool((s != 1).any())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401 - torch hook
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.smoothed = bool((self.inv_smooth != 1).any())


class QLinear(_Smoothed):
    def __init__(self, lin: nn.Linear, act_absmax: torch.Tensor | None = None):
        super().__init__()
        s = smoothing(act_absmax, lin.weight.detach().abs().amax(dim=0))
        self._set_smoothing(s)
        q, sc = quantize_rows(lin.weight.detach() * s[None, :])
        self.gemm = Int8Gemm(q, sc, lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if self.smoothed:
            x = x * self.inv_smooth
        y = self.gemm(x.reshape(-1, x.shape[-1]).float())
        return y.reshape(*lead, y.shape[-1])


class QConv1d(_Smoothed):
    """Conv1d (groups=1, dilation=1, zero padding) as pad + unfold + int8 GEMM."""

    def __init__(self, conv: nn.Conv1d, act_absmax: torch.Tensor | None = None):
        super().__init__()
        if conv.groups != 1 or conv.dilation[0] != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only groups=1, dilation=1, zero-padded numeric-padding Conv1d can be int8-lowered")
        self.k = conv.kernel_size[0]
        self.stride = conv.stride[0]
        self.pad = conv.padding[0]
        out_c = conv.out_channels
        w = conv.weight.detach()
        s = smoothing(act_absmax, w.abs().amax(dim=(0, 2)))
        self._set_smoothing(s)
        # weight (O, C, k) -> (O, C*k): matches the (C, k) order unfold produces below.
        q, sc = quantize_rows((w * s[None, :, None]).reshape(out_c, -1))
        self.gemm = Int8Gemm(q, sc, conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _ = x.shape
        if self.smoothed:
            x = x * self.inv_smooth[None, :, None]
        if self.pad:
            x = F.pad(x, (self.pad, self.pad))
        if self.k == 1 and self.stride == 1:
            cols = x.transpose(1, 2).reshape(-1, c)
            t_out = x.shape[2]
        else:
            u = x.unfold(2, self.k, self.stride)  # (B, C, T_out, k)
            t_out = u.shape[2]
            cols = u.permute(0, 2, 1, 3).reshape(b * t_out, c * self.k)
        y = self.gemm(cols)  # (B*T_out, O)
        return y.reshape(b, t_out, -1).transpose(1, 2)


class QConvTranspose1d(_Smoothed):
    """ConvTranspose1d as int8 GEMM to (C_out * k) per input step, then overlap-add with fold."""

    def __init__(self, conv: nn.ConvTranspose1d, act_absmax: torch.Tensor | None = None):
        super().__init__()
        if conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0:
            raise ValueError("only groups=1, dilation=1, output_padding=0 ConvTranspose1d can be int8-lowered")
        self.k = conv.kernel_size[0]
        self.stride = conv.stride[0]
        self.pad = conv.padding[0]
        self.out_c = conv.out_channels
        w = conv.weight.detach()
        s = smoothing(act_absmax, w.abs().amax(dim=(1, 2)))
        self._set_smoothing(s)
        # weight (C_in, C_out, k) -> (C_out*k, C_in), rows in the (C_out, k) order fold expects.
        w = (w * s[:, None, None]).permute(1, 2, 0).reshape(self.out_c * self.k, conv.in_channels)
        q, sc = quantize_rows(w)
        self.gemm = Int8Gemm(q, sc, None)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t_in = x.shape
        if self.smoothed:
            x = x * self.inv_smooth[None, :, None]
        cols = self.gemm(x.transpose(1, 2).reshape(-1, c))  # (B*T_in, C_out*k)
        cols = cols.reshape(b, t_in, -1).transpose(1, 2)  # (B, C_out*k, T_in)
        full = (t_in - 1) * self.stride + self.k
        y = F.fold(cols, output_size=(1, full), kernel_size=(1, self.k), stride=(1, self.stride))
        y = y.reshape(b, self.out_c, full)
        if self.pad:
            y = y[:, :, self.pad: full - self.pad]
        if self.bias is not None:
            y = y + self.bias[None, :, None]
        return y


def _lower(mod: nn.Module, act_absmax: torch.Tensor | None = None) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return QLinear(mod, act_absmax)
    if isinstance(mod, nn.ConvTranspose1d):
        return QConvTranspose1d(mod, act_absmax)
    if isinstance(mod, nn.Conv1d):
        return QConv1d(mod, act_absmax)
    raise TypeError(type(mod))


def quantize_module(model: nn.Module, skip: Iterable[str] = (),
                    act_absmax: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Replace, in place, every lowerable layer not named in `skip`; returns the names replaced.

    `act_absmax` (layer name -> per-input-channel max |activation| from calibration) turns on
    smoothing for those layers; without it every layer is quantized as is.
    """
    act_absmax = act_absmax or {}
    skip = set(skip)
    done: list[str] = []
    for name, child in list(model.named_modules()):
        for cname, sub in list(child.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(sub, QUANT_TYPES) and full not in skip:
                setattr(child, cname, _lower(sub, act_absmax.get(full)))
                done.append(full)
    for m in model.modules():
        if isinstance(m, Int8Gemm):
            m.pack()
    return done


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one forward pass streams: int8 GEMM weights plus every float parameter/buffer."""
    total = 0
    int8_ids = set()
    for m in model.modules():
        if isinstance(m, Int8Gemm):
            total += m.weight_bytes
            int8_ids.update(id(t) for t in (m.qweight, m.scale, m.bias) if t is not None)
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in int8_ids:
            total += t.numel() * t.element_size()
    return total
