"""Transformer denoiser of Diffusion Policy ("time-series diffusion transformer", minGPT-style).

The action trajectory (B, T, A) is embedded as T tokens; a condition sequence of one time token
(the sinusoidal embedding of the diffusion step) followed by one token per observation step is
encoded once and read by every decoder layer through cross-attention. With ``causal_attn`` an
action token sees only itself and earlier action tokens, and of the condition only the time token
and the observations up to its own index (the "memory mask": token t sees condition s iff
t >= s - 1, because the time token is condition 0).

Module tree = state_dict keys of the original implementation's ``TransformerForDiffusion``, so an
original checkpoint loads with no renaming:

    input_emb.{weight,bias}                 Linear(input_dim, n_emb)
    pos_emb                                 (1, T, n_emb) learned positions of the action tokens
    cond_obs_emb.{weight,bias}              Linear(cond_dim, n_emb)          (observation condition)
    cond_pos_emb                            (1, T_cond, n_emb)               (T_cond = 1 + n_obs_steps)
    encoder.{0,2}.*                         MLP Linear-Mish-Linear over the condition (n_cond_layers = 0)
    encoder.layers.<i>.*                    or pre-norm self-attention layers (n_cond_layers > 0)
    decoder.layers.<i>.{self_attn,multihead_attn}.{in_proj_weight,in_proj_bias,out_proj.*}
    decoder.layers.<i>.{linear1,linear2,norm1,norm2,norm3}.*
    ln_f.*, head.*                          final LayerNorm and Linear(n_emb, output_dim)
    mask, memory_mask                       additive attention masks (buffers; only with causal_attn)

With ``time_as_cond=False`` (no observation condition) it is an encoder-only (BERT-like) stack whose
first token is the time embedding: ``encoder.layers.<i>.*`` with n_layer layers.

The layers are pre-norm (LayerNorm before attention and feed-forward), GELU (exact) in the
feed-forward of width 4*n_emb, LayerNorm eps 1e-5, as torch's TransformerDecoderLayer with
``norm_first=True``. They are written out here rather than taken from torch.nn because the compile
backends need plain Linear/matmul graphs: the int8 backend splits the packed q/k/v projection into
Linear layers (``split_in_projections``), and ONNX / TensorRT export the same graph as eager runs.

Interface: ``forward(sample (B,T,A), timestep, global_cond (B, n_obs_steps*cond_dim))``, the same
call the U-Net takes; the flat condition is the per-frame features concatenated frame by frame,
so reshaping it to (B, n_obs_steps, cond_dim) gives exactly the reference's observation tokens.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from models.unet1d import SinusoidalPosEmb

Timestep = Union[torch.Tensor, int]
LAYER_NORM_EPS = 1e-5
INIT_STD = 0.02


class Attention(nn.Module):
    """Multi-head attention with torch.nn.MultiheadAttention's parameter names (packed q/k/v rows).

    ``in_proj_weight`` rows are [q; k; v]. Self-attention projects once; cross-attention projects
    the query with the q rows and the memory with the k/v rows, as MultiheadAttention does.
    After ``split_in_projection`` the projection lives in two nn.Linear modules (q_in, kv_in) so
    that per-layer quantizers see it; the arithmetic is the same.
    """

    def __init__(self, n_emb: int, n_head: int, p_drop: float):
        super().__init__()
        if n_emb % n_head:
            raise ValueError(f"n_emb {n_emb} is not divisible by n_head {n_head}")
        self.n_emb, self.n_head, self.p_drop = n_emb, n_head, p_drop
        self.in_proj_weight = nn.Parameter(torch.empty(3 * n_emb, n_emb))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * n_emb))
        self.out_proj = nn.Linear(n_emb, n_emb)
        self.q_in: nn.Module | None = None
        self.kv_in: nn.Module | None = None

    def split_in_projection(self) -> None:
        """Move the packed projection into Linear(E, E) for q and Linear(E, 2E) for k/v (compiled copies only)."""
        if self.q_in is not None:
            return
        e = self.n_emb
        w, b = self.in_proj_weight.detach(), self.in_proj_bias.detach()
        q = nn.Linear(e, e).to(w)
        kv = nn.Linear(e, 2 * e).to(w)
        with torch.no_grad():
            q.weight.copy_(w[:e]), q.bias.copy_(b[:e])
            kv.weight.copy_(w[e:]), kv.bias.copy_(b[e:])
        del self.in_proj_weight, self.in_proj_bias
        self.q_in, self.kv_in = q, kv

    def _project(self, query: torch.Tensor, memory: torch.Tensor | None):
        e = self.n_emb
        if self.q_in is not None:
            src = query if memory is None else memory
            k, v = self.kv_in(src).chunk(2, dim=-1)
            return self.q_in(query), k, v
        if memory is None:
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = F.linear(query, self.in_proj_weight[:e], self.in_proj_bias[:e])
        k, v = F.linear(memory, self.in_proj_weight[e:], self.in_proj_bias[e:]).chunk(2, dim=-1)
        return q, k, v

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, L, E); memory (B, S, E) for cross-attention, None for self-attention; mask (L, S) additive."""
        b, n_q, e = query.shape
        q, k, v = self._project(query, memory)
        h, d = self.n_head, e // self.n_head
        q = q.reshape(b, n_q, h, d).transpose(1, 2)
        k = k.reshape(b, k.shape[1], h, d).transpose(1, 2)
        v = v.reshape(b, v.shape[1], h, d).transpose(1, 2)
        if mask is not None:
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.p_drop if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, n_q, e))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention layer: x + SA(LN1(x)); x + FF(LN2(x))."""

    def __init__(self, n_emb: int, n_head: int, p_drop: float):
        super().__init__()
        self.self_attn = Attention(n_emb, n_head, p_drop)
        self.linear1 = nn.Linear(n_emb, 4 * n_emb)
        self.linear2 = nn.Linear(4 * n_emb, n_emb)
        self.norm1 = nn.LayerNorm(n_emb, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(n_emb, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(p_drop)    # inside the feed-forward
        self.dropout1 = nn.Dropout(p_drop)   # after attention
        self.dropout2 = nn.Dropout(p_drop)   # after the feed-forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), None, mask))
        y = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout2(y)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: x + SA(LN1(x)); x + CA(LN2(x), memory); x + FF(LN3(x))."""

    def __init__(self, n_emb: int, n_head: int, p_drop: float):
        super().__init__()
        self.self_attn = Attention(n_emb, n_head, p_drop)
        self.multihead_attn = Attention(n_emb, n_head, p_drop)
        self.linear1 = nn.Linear(n_emb, 4 * n_emb)
        self.linear2 = nn.Linear(4 * n_emb, n_emb)
        self.norm1 = nn.LayerNorm(n_emb, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(n_emb, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(n_emb, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(p_drop)
        self.dropout1 = nn.Dropout(p_drop)
        self.dropout2 = nn.Dropout(p_drop)
        self.dropout3 = nn.Dropout(p_drop)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None,
                memory_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), None, mask))
        x = x + self.dropout2(self.multihead_attn(self.norm2(x), memory, memory_mask))
        y = self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(x)))))
        return x + self.dropout3(y)


class LayerStack(nn.Module):
    """``layers.<i>`` (the key prefix of torch's TransformerEncoder/Decoder, no final norm)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, *args)
        return x


def causal_mask(n: int) -> torch.Tensor:
    """(n, n) additive mask: 0 on and below the diagonal, -inf above (token i sees tokens <= i)."""
    allowed = torch.ones(n, n).tril().bool()
    return torch.zeros(n, n).masked_fill(~allowed, float("-inf"))


def condition_mask(n_tokens: int, n_cond: int) -> torch.Tensor:
    """(n_tokens, n_cond) additive mask: action token t sees condition s iff t >= s - 1 (s = 0 is time)."""
    t = torch.arange(n_tokens)[:, None]
    s = torch.arange(n_cond)[None, :]
    return torch.zeros(n_tokens, n_cond).masked_fill(~(t >= s - 1), float("-inf"))


class TransformerForDiffusion(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, horizon: int, n_obs_steps: int | None = None,
                 cond_dim: int = 0, n_layer: int = 8, n_head: int = 4, n_emb: int = 256,
                 p_drop_emb: float = 0.0, p_drop_attn: float = 0.3, causal_attn: bool = True,
                 time_as_cond: bool = True, n_cond_layers: int = 0):
        super().__init__()
        n_obs_steps = horizon if n_obs_steps is None else n_obs_steps
        self.obs_as_cond = cond_dim > 0
        if self.obs_as_cond and not time_as_cond:
            raise ValueError("time_as_cond=False works only without an observation condition (cond_dim=0)")
        self.horizon, self.n_obs_steps, self.cond_dim = horizon, n_obs_steps, cond_dim
        self.input_dim, self.output_dim = input_dim, output_dim
        self.time_as_cond = time_as_cond
        self.encoder_only = not time_as_cond
        n_tokens = horizon + (0 if time_as_cond else 1)
        n_cond = (1 + (n_obs_steps if self.obs_as_cond else 0)) if time_as_cond else 0
        self.n_tokens, self.n_cond = n_tokens, n_cond

        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, n_tokens, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if self.obs_as_cond else None
        self.cond_pos_emb = None
        if self.encoder_only:
            self.encoder = LayerStack([EncoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_layer)])
            self.decoder = None
        else:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, n_cond, n_emb))
            if n_cond_layers > 0:
                self.encoder = LayerStack([EncoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_cond_layers)])
            else:
                self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
            self.decoder = LayerStack([DecoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_layer)])

        # Saved buffers, as in the reference's state dict (None = no mask, nothing saved).
        with_memory_mask = causal_attn and time_as_cond and self.obs_as_cond
        self.register_buffer("mask", causal_mask(n_tokens) if causal_attn else None)
        self.register_buffer("memory_mask", condition_mask(n_tokens, n_cond) if with_memory_mask else None)
        self.causal_attn = causal_attn
        self.ln_f = nn.LayerNorm(n_emb, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(n_emb, output_dim)
        self.reset_parameters()

    @property
    def global_cond_dim(self) -> int:
        return self.n_obs_steps * self.cond_dim

    def reset_parameters(self) -> None:
        """The reference's init: N(0, 0.02) for every Linear weight, q/k/v rows and learned
        position (the condition positions only when there is an observation condition), zero
        biases, LayerNorm 1/0. Matters for training from scratch, not for imported weights."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, Attention) and m.q_in is None:
                nn.init.normal_(m.in_proj_weight, 0.0, INIT_STD)
                nn.init.zeros_(m.in_proj_bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_emb, 0.0, INIT_STD)
        if self.cond_obs_emb is not None:
            nn.init.normal_(self.cond_pos_emb, 0.0, INIT_STD)

    def split_in_projections(self) -> "TransformerForDiffusion":
        """Every attention's packed q/k/v projection as Linear layers (for int8 lowering of a compiled copy)."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.split_in_projection()
        return self

    def forward(self, sample: torch.Tensor, timestep: Timestep, global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B,T,A), timestep int / 0-d / (B,) int64, global_cond (B, n_obs_steps*cond_dim) -> (B,T,output_dim)."""
        b = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        elif timestep.dim() == 0:
            timestep = timestep[None].to(sample.device)
        # The sinusoid comes out float32 (as in the reference); match the weights' dtype (fp16 runs).
        time_emb = self.time_emb(timestep.expand(b)).to(sample.dtype).unsqueeze(1)
        tokens = self.input_emb(sample)
        if self.encoder_only:
            x = torch.cat([time_emb, tokens], dim=1)
            x = self.drop(x + self.pos_emb[:, : x.shape[1]])
            x = self.encoder(x, self.mask)[:, 1:]
        else:
            cond = time_emb
            if self.obs_as_cond:
                obs_tokens = self.cond_obs_emb(global_cond.reshape(b, self.n_obs_steps, self.cond_dim))
                cond = torch.cat([time_emb, obs_tokens], dim=1)
            memory = self.drop(cond + self.cond_pos_emb[:, : cond.shape[1]])
            memory = self.encoder(memory) if isinstance(self.encoder, nn.Sequential) else self.encoder(memory, None)
            x = self.drop(tokens + self.pos_emb[:, : tokens.shape[1]])
            x = self.decoder(x, memory, self.mask, self.memory_mask)
        return self.head(self.ln_f(x))

