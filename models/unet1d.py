"""Conditional 1-D temporal U-Net with FiLM conditioning: the Diffusion Policy denoiser.

The module tree (and therefore every state_dict key) mirrors the original implementation's
``ConditionalUnet1D`` exactly, so a checkpoint from the original code, or from LeRobot after a
plain prefix rename, loads with no reshaping:

    diffusion_step_encoder.{1,3}.{weight,bias}      Sequential(SinusoidalPosEmb, Linear, Mish, Linear)
    down_modules.<i>.{0,1}.*                        ConditionalResidualBlock1D
    down_modules.<i>.2.conv.{weight,bias}           Downsample1d (absent at the last level: Identity)
    mid_modules.{0,1}.*                             ConditionalResidualBlock1D
    up_modules.<i>.{0,1}.*                          ConditionalResidualBlock1D (block 0 takes the skip concat)
    up_modules.<i>.2.conv.{weight,bias}             Upsample1d (ConvTranspose1d)
    final_conv.0.block.{0,1}.*                      Conv1dBlock (Conv1d + GroupNorm(8), NOT n_groups)
    final_conv.1.{weight,bias}                      Conv1d(start_dim, input_dim, 1)

    ConditionalResidualBlock1D:
      blocks.{0,1}.block.0.{weight,bias}            Conv1d(k, padding k//2)
      blocks.{0,1}.block.1.{weight,bias}            GroupNorm(n_groups)
      cond_encoder.1.{weight,bias}                  Linear(cond_dim, 2C with FiLM scale, else C)
      residual_conv.{weight,bias}                   1x1 Conv1d, only when in_channels != out_channels

The arithmetic follows the same order as the reference so float32 outputs agree to rounding.
Tensors are laid out (B, T, A) at the interface and (B, A, T) inside, like the reference.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

Timestep = Union[torch.Tensor, int]
# A residual block's FiLM: the cond encoder's output, or (scale or None, bias) already split and shaped (B, C, 1).
FiLM = Union[torch.Tensor, Tuple[Optional[torch.Tensor], torch.Tensor]]

# GroupNorm groups of final_conv.0 in both references (Conv1dBlock's default; n_groups is not passed).
FINAL_CONV_GROUPS = 8


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion step (computed on the fly, no weights)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        scale = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, device=x.device) * -scale)
        emb = x[:, None] * freqs[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Downsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, kept as ``.block`` so keys read ``block.0`` / ``block.1``."""

    def __init__(self, inp_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(inp_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM (scale, bias) from the condition vector in between, plus a residual."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 3,
        n_groups: int = 8,
        cond_predict_scale: bool = False,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups),
            ]
        )
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        cond_channels = out_channels * 2 if cond_predict_scale else out_channels
        # Index 0 is the Mish, index 1 the Linear: the reference names the Linear `cond_encoder.1`.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels))
        self.residual_conv = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.forward_film(x, self.cond_encoder(cond))

    def split_film(self, film: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """The cond encoder's output (B, 2C with a scale, else C) as (scale or None, bias), each (B, C, 1)."""
        if not self.cond_predict_scale:
            return None, film.unsqueeze(-1)
        embed = film.unsqueeze(-1).reshape(film.shape[0], 2, self.out_channels, 1)
        return embed[:, 0, ...], embed[:, 1, ...]

    def forward_film(self, x: torch.Tensor, film: FiLM) -> torch.Tensor:
        """The block with its FiLM given: ``cond_encoder(cond)`` ((B, 2C) with a scale, else (B, C)), or already
        split as (scale or None, bias), each (B, C, 1) (models/film_fold.py does that once per chunk)."""
        out = self.blocks[0](x)
        scale, bias = film if isinstance(film, tuple) else self.split_film(film)
        out = out + bias if scale is None else scale * out + bias
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Predicts noise (or the clean sample) for an action trajectory, given the step k and a global condition.

    ``global_cond_dim`` is the flattened observation feature size (n_obs_steps * per-frame features).
    The horizon must be divisible by 2**(len(down_dims)-1) for the skip connections to line up.
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 256,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ):
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("down_dims must list at least one channel count")
        if down_dims[0] % FINAL_CONV_GROUPS:
            raise ValueError(f"down_dims[0]={down_dims[0]} must be divisible by {FINAL_CONV_GROUPS} "
                             "(the final conv block's GroupNorm always has 8 groups, as in both references)")
        self.input_dim = int(input_dim)
        self.global_cond_dim = int(global_cond_dim)
        self.down_dims = tuple(down_dims)
        all_dims = [self.input_dim] + down_dims
        start_dim = down_dims[0]

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        cond_dim = dsed + self.global_cond_dim
        self.cond_dim = cond_dim

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                cin, cout, cond_dim, kernel_size=kernel_size, n_groups=n_groups,
                cond_predict_scale=cond_predict_scale,
            )

        in_out = list(zip(all_dims[:-1], all_dims[1:]))
        mid_dim = all_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid_dim, mid_dim), block(mid_dim, mid_dim)])

        self.down_modules = nn.ModuleList()
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= len(in_out) - 1
            self.down_modules.append(
                nn.ModuleList(
                    [block(dim_in, dim_out), block(dim_out, dim_out),
                     Downsample1d(dim_out) if not is_last else nn.Identity()]
                )
            )

        # Same `is_last` test as the reference: with 3 levels both up levels upsample.
        self.up_modules = nn.ModuleList()
        for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            is_last = ind >= len(in_out) - 1
            self.up_modules.append(
                nn.ModuleList(
                    [block(dim_out * 2, dim_in), block(dim_in, dim_in),
                     Upsample1d(dim_in) if not is_last else nn.Identity()]
                )
            )

        # Both references build the final block with Conv1dBlock's default of 8 groups, whatever
        # n_groups says; the weights have the same shapes either way, so only this line keeps an
        # n_groups != 8 checkpoint computing what it was trained to compute.
        self.final_conv = nn.Sequential(
            Conv1dBlock(start_dim, start_dim, kernel_size=kernel_size, n_groups=FINAL_CONV_GROUPS),
            nn.Conv1d(start_dim, self.input_dim, 1),
        )

    def forward(self, sample: torch.Tensor, timestep: Timestep, global_cond: torch.Tensor) -> torch.Tensor:
        """sample (B,T,A), timestep int / 0-d / (B,) int64, global_cond (B,D) -> (B,T,A)."""
        x = sample.transpose(1, 2)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        elif timestep.dim() == 0:
            timestep = timestep[None].to(sample.device)
        timesteps = timestep.expand(x.shape[0])

        global_feature = torch.cat([self.step_feature(timesteps, x.dtype), global_cond], dim=-1)
        return self.forward_film(sample, [blk.cond_encoder(global_feature) for blk in self.residual_blocks()])

    def step_feature(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The diffusion step's embedding (B, diffusion_step_embed_dim), the first part of every block's condition."""
        enc = self.diffusion_step_encoder
        # The sinusoid comes out float32 (as in the reference); match the weights' dtype (fp16/fp64 runs).
        return enc[3](enc[2](enc[1](enc[0](timesteps).to(dtype))))

    def residual_blocks(self) -> list[ConditionalResidualBlock1D]:
        """Every FiLM-conditioned block in the order forward runs them (the order of forward_film's films)."""
        blocks: list[ConditionalResidualBlock1D] = []
        for resnet, resnet2, _ in self.down_modules:
            blocks += [resnet, resnet2]
        blocks += list(self.mid_modules)
        for resnet, resnet2, _ in self.up_modules:
            blocks += [resnet, resnet2]
        return blocks

    def forward_film(self, sample: torch.Tensor, films: Sequence[FiLM]) -> torch.Tensor:
        """The U-Net with each block's FiLM vector given (one per residual_blocks() entry, in order)."""
        x = sample.transpose(1, 2)
        film = iter(films)
        skips = []
        for resnet, resnet2, downsample in self.down_modules:
            x = resnet.forward_film(x, next(film))
            x = resnet2.forward_film(x, next(film))
            skips.append(x)
            x = downsample(x)

        for mid in self.mid_modules:
            x = mid.forward_film(x, next(film))

        for resnet, resnet2, upsample in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = resnet.forward_film(x, next(film))
            x = resnet2.forward_film(x, next(film))
            x = upsample(x)

        x = self.final_conv(x)
        return x.transpose(1, 2)
