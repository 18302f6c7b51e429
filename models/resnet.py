"""A plain-torch ResNet-18 trunk (no torchvision dependency) with torchvision's parameter names.

Keys: ``conv1.weight``, ``bn1.*``, ``layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}.*`` and
``layer{2,3,4}.0.downsample.{0,1}.*``. There is no ``fc`` and no ``avgpool``: the trunk ends at
layer4's feature map (B, 8*width, H/32, W/32), which is what both LeRobot and robomimic keep.

``norm="group"`` puts ``GroupNorm(C // 16, C)`` (eps 1e-5, affine) where torchvision has
BatchNorm, keeping the BatchNorm *names* (``bn1``, ``downsample.1``) as the Diffusion Policy code
does; these have no running statistics. ``norm="batch"`` uses a BatchNorm that always normalizes
with its running statistics (frozen, as in inference), with torchvision's buffers
(``running_mean``, ``running_var``, ``num_batches_tracked``).

``width`` scales every channel count (64 = the real ResNet-18); names never change, so a slim
trunk for CPU training is still a "resnet18" to every loader. GroupNorm needs width >= 16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("group", "batch")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always uses its running statistics, in train mode too (pretrained-trunk practice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        if channels % 16:
            raise ValueError(f"GroupNorm(C//16) needs channels divisible by 16, got {channels}")
        return nn.GroupNorm(num_groups=channels // 16, num_channels=channels)
    if kind == "batch":
        return FrozenBatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r} (allowed: {', '.join(NORMS)})")


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), make_norm(norm, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """conv1 -> bn1 -> relu -> maxpool -> layer1..layer4; output stride 32."""

    def __init__(self, in_channels: int = 3, norm: str = "group", width: int = 64):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r} (allowed: {', '.join(NORMS)})")
        self.width = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        chans = [width, width * 2, width * 4, width * 8]
        inplanes = width
        for i, planes in enumerate(chans):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride, norm), BasicBlock(planes, planes, 1, norm))
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    @staticmethod
    def feature_map_size(h: int, w: int) -> tuple[int, int]:
        """Spatial size of layer4's output for an (h, w) input, by the conv arithmetic (no forward pass)."""

        def conv(n: int, k: int, s: int, p: int) -> int:
            return (n + 2 * p - k) // s + 1

        def trunk(n: int) -> int:
            n = conv(n, 7, 2, 3)  # conv1
            n = conv(n, 3, 2, 1)  # maxpool
            for _ in range(3):  # layer2..4 stride-2 3x3 convs
                n = conv(n, 3, 2, 1)
            return n

        return trunk(h), trunk(w)
