"""Observation encoder: images -> ResNet-18 trunk -> spatial softmax -> Linear (-> ReLU), plus low-dim state.

Parameter names (what a renaming table must produce), for one image encoder ``ImageEncoder``:

    backbone.conv1.weight, backbone.bn1.{weight,bias}, backbone.layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}.*,
    backbone.layer{2,3,4}.0.downsample.{0,1}.*     (torchvision resnet18 names; see models/resnet.py)
    pool.nets.{weight,bias}                        1x1 Conv2d keypoint projection C -> num_kp
    pool.pos_grid                    (H*W, 2)      buffer, softmax_layout="lerobot"
    pool.pos_x, pool.pos_y           (1, H*W)      buffers, softmax_layout="robomimic"
    pool.temperature                 (1,)          buffer, softmax_layout="robomimic"
    out.{weight,bias}                              Linear(pool_dim, feature_dim)

``ObservationEncoder`` holds ``image_encoders.<i>.*``: one entry (index 0) shared by every camera,
or one per camera in ``image_keys`` order. Low-dim features pass through unchanged.

Source layouts, for the renaming tables:
  LeRobot   ``diffusion.rgb_encoder[.N].backbone.{0,1,4..7}`` = conv1, bn1, layer1..4;
            ``.pool.nets``, ``.pool.pos_grid``, ``.out``. Per-frame order [state, cam0, cam1, ...].
  robomimic ``obs_encoder.obs_nets.<cam>.backbone.nets.{0,1,4..7}`` = conv1, bn1, layer1..4;
            ``.pool.nets``, ``.pool.{pos_x,pos_y,temperature}``, ``.nets.3`` = out (the
            ``.nets.0/.nets.1`` keys are aliases of backbone/pool). Per-frame order = the cfg's
            shape_meta.obs order, e.g. [image, agent_pos].
Both produce keypoints as [x0, y0, x1, y1, ...] and apply a ReLU after ``out``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.resnet import ResNet18Trunk

SOFTMAX_LAYOUTS = ("lerobot", "robomimic")
POOLS = ("spatial_softmax", "avg")


class SpatialSoftmax(nn.Module):
    """Keypoints as the softmax-weighted mean pixel position of each (projected) feature channel.

    The grid is x = linspace(-1, 1, W), y = linspace(-1, 1, H), flattened with x varying fastest.
    ``layout`` picks the buffer names and the reduction, so each reference's arithmetic is matched:
    "lerobot" (``pos_grid`` and a matmul) or "robomimic" (``pos_x``/``pos_y``/``temperature`` and
    a sum of products, softmax of feature / temperature).
    """

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int | None = 32,
                 layout: str = "lerobot", temperature: float = 1.0):
        super().__init__()
        if layout not in SOFTMAX_LAYOUTS:
            raise ValueError(f"unknown spatial softmax layout {layout!r} (allowed: {', '.join(SOFTMAX_LAYOUTS)})")
        self.layout = layout
        self._h, self._w = int(height), int(width)
        if num_kp is not None:
            self.nets: nn.Module | None = nn.Conv2d(in_channels, num_kp, kernel_size=1)
            self.num_kp = int(num_kp)
        else:
            self.nets = None
            self.num_kp = int(in_channels)
        # Built in float64 by numpy then cast, as both references do, so the buffers match bit for bit.
        pos_x, pos_y = np.meshgrid(np.linspace(-1.0, 1.0, self._w), np.linspace(-1.0, 1.0, self._h))
        n = self._h * self._w
        if layout == "lerobot":
            grid = torch.cat([torch.from_numpy(pos_x.reshape(n, 1)).float(),
                              torch.from_numpy(pos_y.reshape(n, 1)).float()], dim=1)
            self.register_buffer("pos_grid", grid)
        else:
            self.register_buffer("temperature", torch.ones(1) * temperature)
            self.register_buffer("pos_x", torch.from_numpy(pos_x.reshape(1, n)).float())
            self.register_buffer("pos_y", torch.from_numpy(pos_y.reshape(1, n)).float())

    @property
    def out_dim(self) -> int:
        return 2 * self.num_kp

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.nets is not None:
            features = self.nets(features)
        flat = features.reshape(-1, self._h * self._w)
        if self.layout == "lerobot":
            attention = F.softmax(flat, dim=-1)
            expected_xy = attention @ self.pos_grid
        else:
            attention = F.softmax(flat / self.temperature, dim=-1)
            expected_x = torch.sum(self.pos_x * attention, dim=1, keepdim=True)
            expected_y = torch.sum(self.pos_y * attention, dim=1, keepdim=True)
            expected_xy = torch.cat([expected_x, expected_y], 1)
        return expected_xy.reshape(-1, self.num_kp * 2)


class GlobalAvgPool(nn.Module):
    """The alternative to keypoints: mean over the feature map, (B, C)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.out_dim = in_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))


def center_crop(x: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """torchvision's center_crop offsets: round((H - h) / 2), round((W - w) / 2)."""
    h, w = x.shape[-2], x.shape[-1]
    if (h, w) == (crop_h, crop_w):
        return x
    if crop_h > h or crop_w > w:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the image {h}x{w}")
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return x[..., top:top + crop_h, left:left + crop_w]


def random_crop(x: torch.Tensor, crop_h: int, crop_w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent random crop per image of (N, C, H, W), the training-time augmentation of both references."""
    n, c, h, w = x.shape
    if (h, w) == (crop_h, crop_w):
        return x
    top = torch.randint(0, h - crop_h + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, w - crop_w + 1, (n,), generator=generator).to(x.device)
    rows = (top[:, None] + torch.arange(crop_h, device=x.device)).view(n, 1, crop_h, 1).expand(n, c, crop_h, w)
    x = x.gather(2, rows)
    cols = (left[:, None] + torch.arange(crop_w, device=x.device)).view(n, 1, 1, crop_w).expand(n, c, crop_h, crop_w)
    return x.gather(3, cols)


class ImageEncoder(nn.Module):
    """One camera frame batch (N, 3, H, W), already normalized, -> features (N, feature_dim).

    Resize (optional, bilinear) then crop happen here, so they run on whatever device the trunk
    runs on: the center crop in eval mode, a random crop per image in train mode.
    ``input_shape`` is the (3, H, W) the encoder receives.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        crop_shape: Sequence[int] | None = None,
        resize_shape: Sequence[int] | None = None,
        norm: str = "group",
        width: int = 64,
        pool: str = "spatial_softmax",
        num_keypoints: int = 32,
        feature_dim: int = 64,
        relu: bool = True,
        softmax_layout: str = "lerobot",
        softmax_temperature: float = 1.0,
        project: bool = True,
        imagenet_norm: bool = False,
    ):
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        self.resize_shape = tuple(int(v) for v in resize_shape) if resize_shape else None
        if self.resize_shape:
            h, w = self.resize_shape
        self.crop_shape = tuple(int(v) for v in crop_shape) if crop_shape else None
        if self.crop_shape:
            if self.crop_shape[0] > h or self.crop_shape[1] > w:
                raise ValueError(f"crop {self.crop_shape[0]}x{self.crop_shape[1]} is larger than the image {h}x{w}")
            h, w = self.crop_shape
        self.backbone = ResNet18Trunk(in_channels=c, norm=norm, width=width)
        fh, fw = ResNet18Trunk.feature_map_size(h, w)
        if pool == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(self.backbone.out_channels, fh, fw, num_keypoints,
                                                  layout=softmax_layout, temperature=softmax_temperature)
        elif pool == "avg":
            self.pool = GlobalAvgPool(self.backbone.out_channels)
        else:
            raise ValueError(f"unknown pool {pool!r} (allowed: {', '.join(POOLS)})")
        if project:
            self.out: nn.Module = nn.Linear(self.pool.out_dim, feature_dim)
            self.relu = nn.ReLU() if relu else nn.Identity()
            self.feature_dim = int(feature_dim)
        else:
            # The original DiffusionUnetImagePolicy (torchvision ResNet, fc = Identity): pooled
            # trunk features are the image features, no Linear and no ReLU.
            self.out = nn.Identity()
            self.relu = nn.Identity()
            self.feature_dim = int(self.pool.out_dim)
        # Its MultiImageObsEncoder may re-normalize with ImageNet statistics after the crop
        # (torchvision Normalize: (x - mean) / std); derived constants, not saved.
        self.imagenet_norm = bool(imagenet_norm)
        if self.imagenet_norm:
            self.register_buffer("im_mean", torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1), persistent=False)
            self.register_buffer("im_std", torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_shape and tuple(x.shape[-2:]) != self.resize_shape:
            x = F.interpolate(x, size=self.resize_shape, mode="bilinear", align_corners=False, antialias=True)
        if self.crop_shape:
            # Random crops only while training (augmentation); inference always takes the center.
            x = random_crop(x, *self.crop_shape) if self.training else center_crop(x, *self.crop_shape)
        if self.imagenet_norm:
            x = (x - self.im_mean) / self.im_std
        x = torch.flatten(self.pool(self.backbone(x)), start_dim=1)
        return self.relu(self.out(x))


class ObservationEncoder(nn.Module):
    """Normalized observations -> the U-Net's global condition (B, n_obs * per_frame_dim), oldest frame first.

    ``feature_order`` lists every image and state key once; each frame's features are concatenated
    in that order (LeRobot: state first, then cameras; original hybrid: the cfg's shape_meta order).
    With no image keys this is the low-dim policy's conditioning: normalized state, flattened.
    """

    def __init__(
        self,
        image_shapes: Mapping[str, Sequence[int]],
        state_dims: Mapping[str, int],
        feature_order: Sequence[str] | None = None,
        shared: bool = True,
        **image_kwargs,
    ):
        super().__init__()
        self.image_keys = list(image_shapes)
        self.state_keys = list(state_dims)
        self.state_dims = {k: int(v) for k, v in state_dims.items()}
        order = list(feature_order) if feature_order else self.state_keys + self.image_keys
        if sorted(order) != sorted(self.image_keys + self.state_keys):
            raise ValueError(f"feature_order {order} must list each image and state key exactly once "
                             f"(images {self.image_keys}, state {self.state_keys})")
        self.feature_order = order
        self.shared = bool(shared)
        if self.shared and self.image_keys:
            shapes = {tuple(int(v) for v in s) for s in image_shapes.values()}
            if len(shapes) > 1:
                raise ValueError(f"a shared image encoder needs equal image shapes, got {sorted(shapes)}")
        n_enc = (1 if self.shared else len(self.image_keys)) if self.image_keys else 0
        self.image_encoders = nn.ModuleList(
            [ImageEncoder(image_shapes[self.image_keys[i]], **image_kwargs) for i in range(n_enc)]
        )
        feat = self.image_encoders[0].feature_dim if n_enc else 0
        self.per_frame_dim = sum(self.state_dims.values()) + feat * len(self.image_keys)

    def output_dim(self, n_obs_steps: int) -> int:
        return self.per_frame_dim * n_obs_steps

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs: images (B, n_obs, 3, H, W), state (B, n_obs, D), all normalized."""
        feats: dict[str, torch.Tensor] = {}
        if self.image_keys:
            b, t = obs[self.image_keys[0]].shape[:2]
            if self.shared:
                # All cameras in one batch, as LeRobot does: (cam, b, t) stacked along the batch axis.
                stacked = torch.cat([obs[k].reshape(b * t, *obs[k].shape[2:]) for k in self.image_keys], dim=0)
                out = self.image_encoders[0](stacked)
                for i, k in enumerate(self.image_keys):
                    feats[k] = out[i * b * t:(i + 1) * b * t].reshape(b, t, -1)
            else:
                for enc, k in zip(self.image_encoders, self.image_keys):
                    x = obs[k]
                    feats[k] = enc(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        for k in self.state_keys:
            feats[k] = obs[k]
        per_frame = torch.cat([feats[k] for k in self.feature_order], dim=-1)
        return per_frame.reshape(per_frame.shape[0], -1)
