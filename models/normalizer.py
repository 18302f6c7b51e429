"""Per-feature normalization in the two reference conventions, reproduced bit-exactly in float32.

A trained policy only works when its inputs are scaled exactly as in training, and the two
sources of checkpoints store and apply statistics differently, so both are kept as-is rather
than converted (a conversion would round differently):

``convention="lerobot"`` (buffers ``min``/``max`` or ``mean``/``std``; eps 1e-8)
    min_max   normalize ``2 * (x - min) / d - 1`` with d = max - min, a zero d replaced by 1e-8;
              unnormalize ``(y + 1) / 2 * d + min``
    mean_std  normalize ``(x - mean) / (std + 1e-8)``; unnormalize ``y * std + mean`` (no eps)

``convention="original"`` (buffers ``scale``/``offset``, as diffusion_policy's LinearNormalizer)
    normalize ``x * scale + offset``; unnormalize ``(y - offset) / scale``.
    ``fit_original`` computes scale/offset like its ``_fit``: 'limits' maps [min, max] to
    [-1, 1] and, where max - min < 1e-4, uses scale 1 and offset -min (+0 = mid of the output
    range), i.e. passes the value through shifted to 0; 'gaussian' uses 1/std with std < 1e-4 -> 1.

``mode="identity"`` passes values through (no buffers).

Statistics broadcast against the trailing axes: shape (D,) for vectors, (C, 1, 1) per image
channel (LeRobot) or (1,) for a single scalar over the whole image (the original image field).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

MODES = ("min_max", "mean_std", "identity")
CONVENTIONS = ("lerobot", "original")
LEROBOT_EPS = 1e-8

_BUFFERS = {
    ("lerobot", "min_max"): ("min", "max"),
    ("lerobot", "mean_std"): ("mean", "std"),
    ("original", "min_max"): ("scale", "offset"),
    ("original", "mean_std"): ("scale", "offset"),
}


class FieldNormalizer(nn.Module):
    """Normalizer for one feature. Statistics are float32 buffers, so they save with the weights."""

    def __init__(self, mode: str, convention: str, stat_shape: tuple[int, ...]):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown normalization mode {mode!r} (allowed: {', '.join(MODES)})")
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown normalization convention {convention!r} (allowed: {', '.join(CONVENTIONS)})")
        self.mode = mode
        self.convention = convention
        self.stat_shape = tuple(int(s) for s in stat_shape)
        for name in self.buffer_names:
            # Neutral defaults: a randomly initialised policy normalizes nothing away.
            init = torch.zeros if name in ("min", "mean", "offset") else torch.ones
            value = init(self.stat_shape)
            if name == "min":
                value = value - 1.0
            self.register_buffer(name, value)

    @property
    def buffer_names(self) -> tuple[str, ...]:
        return () if self.mode == "identity" else _BUFFERS[(self.convention, self.mode)]

    def set_stats(self, **stats) -> "FieldNormalizer":
        """Copy statistics in (names as in buffer_names); shapes must broadcast to stat_shape exactly."""
        missing = set(self.buffer_names) - set(stats)
        if missing:
            raise ValueError(f"missing statistics {sorted(missing)} for {self.convention}/{self.mode}")
        for name in self.buffer_names:
            value = torch.as_tensor(stats[name], dtype=torch.float32)
            if value.numel() != int(torch.tensor(self.stat_shape).prod()):
                raise ValueError(f"statistic {name!r} has {value.numel()} values, expected shape {self.stat_shape}")
            getattr(self, name).copy_(value.reshape(self.stat_shape))
        return self

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # Statistics stay float32 whatever dtype the network is cast to: raw values like 500 px
        # or 1e-3 rad ranges lose too much in fp16/bf16. Device moves still apply.
        saved = {n: b for n, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for n, b in saved.items():
            self._buffers[n] = b.to(device=self._buffers[n].device, dtype=torch.float32)
        return self

    def _min_max_denominator(self) -> torch.Tensor:
        d = self.max - self.min
        return torch.where(d == 0, torch.tensor(LEROBOT_EPS, dtype=d.dtype, device=d.device), d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize."""
        if self.mode == "identity":
            return x
        if self.convention == "original":
            return x * self.scale + self.offset
        if self.mode == "mean_std":
            return (x - self.mean) / (self.std + LEROBOT_EPS)
        return 2 * (x - self.min) / self._min_max_denominator() - 1

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return y
        if self.convention == "original":
            return (y - self.offset) / self.scale
        if self.mode == "mean_std":
            return y * self.std + self.mean
        return (y + 1) / 2 * self._min_max_denominator() + self.min


def fit_original(data: torch.Tensor, mode: str = "min_max", output_min: float = -1.0, output_max: float = 1.0,
                 range_eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """scale/offset as the original LinearNormalizer fits them, over all but the last axis.

    mode "min_max" is its 'limits', "mean_std" its 'gaussian'. Returns float32 tensors (D,).
    """
    x = torch.as_tensor(data, dtype=torch.float32).reshape(-1, data.shape[-1])
    if mode == "min_max":
        in_min, in_max = x.min(dim=0).values, x.max(dim=0).values
        in_range = in_max - in_min
        ignore = in_range < range_eps
        in_range[ignore] = output_max - output_min
        scale = (output_max - output_min) / in_range
        offset = output_min - scale * in_min
        offset[ignore] = (output_max + output_min) / 2 - in_min[ignore]
    elif mode == "mean_std":
        mean, std = x.mean(dim=0), x.std(dim=0)
        std[std < range_eps] = 1
        scale = 1 / std
        offset = -mean * scale
    else:
        raise ValueError(f"fit_original: unknown mode {mode!r} (allowed: min_max, mean_std)")
    return {"scale": scale, "offset": offset}


def fit_lerobot(data: torch.Tensor, mode: str = "min_max") -> dict[str, torch.Tensor]:
    """LeRobot-style statistics over all but the last axis (for training our own policies)."""
    x = torch.as_tensor(data, dtype=torch.float32).reshape(-1, data.shape[-1])
    if mode == "min_max":
        return {"min": x.min(dim=0).values, "max": x.max(dim=0).values}
    if mode == "mean_std":
        return {"mean": x.mean(dim=0), "std": x.std(dim=0)}
    raise ValueError(f"fit_lerobot: unknown mode {mode!r} (allowed: min_max, mean_std)")


class NormalizerSet(nn.Module):
    """One FieldNormalizer per feature key. Keys may contain dots (LeRobot names), so module names
    escape '.' as '__'; always look fields up by the real key with ``[key]``."""

    def __init__(self, fields: Mapping[str, FieldNormalizer]):
        super().__init__()
        self.keys_in_order = list(fields)
        escaped = [self.escape(k) for k in self.keys_in_order]
        if len(set(escaped)) != len(escaped):
            raise ValueError(f"feature keys collide after escaping '.': {self.keys_in_order}")
        self.fields = nn.ModuleDict({self.escape(k): v for k, v in fields.items()})

    @staticmethod
    def escape(key: str) -> str:
        return key.replace(".", "__")

    def __getitem__(self, key: str) -> FieldNormalizer:
        return self.fields[self.escape(key)]  # type: ignore[return-value]

    def __contains__(self, key: str) -> bool:
        return self.escape(key) in self.fields

    def normalize(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (self[k](v) if k in self else v) for k, v in batch.items()}
