"""The U-Net's FiLM conditioning computed in two parts, for whole-loop graphs (edgedp/compile/ort_loop.py).

Every residual block of the U-Net turns the condition c = [step embedding e(t), observation feature g] into
its FiLM vector with Mish then Linear: W·mish([e(t), g]) + b. Mish is element-wise, so the vector splits
exactly into W_t·mish(e(t)) + (W_g·mish(g) + b). Inside a loop graph with K fixed steps:

* t is a constant at each unrolled step, so W_t·mish(e(t)) is a constant the exporter folds away;
* g is the same for all K steps of a chunk, so W_g·mish(g) + b is computed once per chunk, not K times.

The per-chunk part is also split into FiLM's scale and bias and shaped for the block once per chunk
(ConditionalResidualBlock1D.split_film). What remains per step and block is two Adds, instead of a GEMM and the
reshapes and slices around it: at the common size (U-Net 64/128/256, 12 blocks) onnxruntime's optimized loop
graph has 3143 kernels instead of 3588, and the per-kernel cost is what bounds a step there (docs/compile.md).
The result equals the unsplit U-Net up to float rounding (the two partial products are summed in another order).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.unet1d import ConditionalUnet1D, Timestep

FiLMParts = Tuple[Optional[torch.Tensor], torch.Tensor]  # (scale or None, bias), each (B, C, 1)


class FoldedFiLMUnet(nn.Module):
    """ConditionalUnet1D's forward with each block's FiLM split into a step part and a per-chunk part.

    The per-chunk part is cached on the condition tensor (and the trace) while tracing (the sampler passes one
    tensor to all K denoiser calls of a chunk), so the traced graph computes it once, already split into scale
    and bias and shaped (B, C, 1). Outside tracing nothing is cached: every call recomputes both parts, so eager
    use is correct whatever the caller does to the tensor.
    """

    def __init__(self, unet: ConditionalUnet1D):
        super().__init__()
        self.unet = unet
        d = unet.diffusion_step_encoder[1].in_features  # width of the step embedding, the first part of c
        blocks = unet.residual_blocks()
        frozen = lambda t: nn.Parameter(t.detach().clone(), requires_grad=False)  # noqa: E731
        self.step_weights = nn.ParameterList(frozen(blk.cond_encoder[1].weight[:, :d]) for blk in blocks)
        self.cond_weights = nn.ParameterList(frozen(blk.cond_encoder[1].weight[:, d:]) for blk in blocks)
        self.biases = nn.ParameterList(frozen(blk.cond_encoder[1].bias) for blk in blocks)
        self._traced: Optional[tuple[Any, torch.Tensor, list[FiLMParts]]] = None

    def chunk_terms(self, global_cond: torch.Tensor) -> list[FiLMParts]:
        """W_g·mish(g) + b for every block, split: the part of the FiLM vectors that is the same at every step."""
        trace = _tracing_state()
        if trace is not None and self._traced is not None and self._traced[0] is trace \
                and self._traced[1] is global_cond:
            return self._traced[2]
        m = F.mish(global_cond)
        terms = [blk.split_film(F.linear(m, w, b))
                 for blk, w, b in zip(self.unet.residual_blocks(), self.cond_weights, self.biases)]
        # Keyed on the trace too: two exports of one module may be handed the same input tensor.
        self._traced = (trace, global_cond, terms) if trace is not None else None
        return terms

    def forward(self, sample: torch.Tensor, timestep: Timestep, global_cond: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(timestep) or timestep.dim() == 0:
            timestep = torch.as_tensor(timestep, dtype=torch.long, device=sample.device).reshape(1)
        step = F.mish(self.unet.step_feature(timestep.expand(sample.shape[0]), sample.dtype))
        films = []
        for blk, w, (scale, bias) in zip(self.unet.residual_blocks(), self.step_weights, self.chunk_terms(global_cond)):
            step_scale, step_bias = blk.split_film(F.linear(step, w))
            films.append((None if scale is None else step_scale + scale, step_bias + bias))
        return self.unet.forward_film(sample, films)


def _tracing_state() -> Any:
    """The running trace (one object for the whole trace), or None outside tracing. torch's tracer keeps no
    public handle on it; where this private call is missing nothing is cached (correct, just not folded)."""
    get = getattr(torch._C, "_get_tracing_state", None)
    return get() if get is not None and torch.jit.is_tracing() else None


def fold_film(denoiser: nn.Module) -> nn.Module:
    """The folded form for a U-Net denoiser; any other denoiser (the transformer) is returned unchanged."""
    return FoldedFiLMUnet(denoiser) if isinstance(denoiser, ConditionalUnet1D) else denoiser
