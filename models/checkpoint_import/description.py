"""The format-neutral result of reading a foreign checkpoint, before it becomes a native policy.

Both importers (LeRobot, original `.ckpt`) fill one `ImportedPolicy`: architecture options for
the encoder and U-Net, scheduler options, per-feature normalization, the weights already renamed
to the native module names, and for every setting the place in the source it came from (shown by
`edgedp info`, so a user can check an import against their training config).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class NormField:
    """Normalization of one feature: mode, convention ('lerobot' or 'original') and its statistics."""

    mode: str                       # "min_max" | "mean_std" | "identity"
    convention: str                 # "lerobot" | "original"
    stats: dict[str, torch.Tensor]  # lerobot: min/max or mean/std; original: scale/offset
    source: str = ""


@dataclass
class ImportedPolicy:
    source_format: str                      # "lerobot" | "diffusion_policy"
    source_path: str
    architecture: str                       # class name the source trained
    horizon: int
    n_obs_steps: int
    n_action_steps: int
    action_start: int                       # index of the first executed step in the horizon
    action_dim: int
    action_key: str
    image_shapes: dict[str, tuple[int, int, int]]
    state_dims: dict[str, int]
    feature_order: list[str]
    shared_image_encoder: bool
    image_kwargs: dict[str, Any]
    unet_kwargs: dict[str, Any]
    scheduler: dict[str, Any]
    normalization: dict[str, NormField]
    encoder_state: dict[str, torch.Tensor]  # native names, relative to ObservationEncoder
    unet_state: dict[str, torch.Tensor]     # the denoiser's weights, native names (ConditionalUnet1D or transformer)
    provenance: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    denoiser: str = "unet"                  # "unet" | "transformer": which network unet_state holds
    denoiser_kwargs: dict[str, Any] = field(default_factory=dict)  # TransformerForDiffusion arguments (transformer)

    @property
    def global_cond_dim(self) -> int:
        return int(self.unet_kwargs["global_cond_dim"])

    def param_counts(self) -> dict[str, int]:
        return {
            "denoiser": sum(int(t.numel()) for k, t in self.unet_state.items() if not _is_buffer_name(k)),
            "encoder": sum(int(t.numel()) for k, t in self.encoder_state.items() if not _is_buffer_name(k)),
        }


def _is_buffer_name(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in ("pos_grid", "pos_x", "pos_y", "temperature", "running_mean", "running_var", "num_batches_tracked",
                    "mask", "memory_mask")  # the transformer's attention masks
