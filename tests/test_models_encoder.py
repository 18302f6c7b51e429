"""Encoder structure (vs the original robomimic key list), spatial-softmax layouts, crop and feature order."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.encoder import ImageEncoder, ObservationEncoder, SpatialSoftmax, center_crop
from models.resnet import ResNet18Trunk

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
KEYS = FIXTURES / "diffusion_policy" / "state_dict_keys.txt"
LEROBOT = FIXTURES / "lerobot" / "pusht_1cam" / "pretrained_model" / "model.safetensors"
TRUNK = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _robomimic_image_keys() -> dict[str, list[int]]:
    """The hybrid policy's image encoder keys, renamed the obvious way onto ImageEncoder names."""
    prefix = "obs_encoder.obs_nets.image."
    out = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, _dt, kind = line.split("\t")
        if not key.startswith(prefix) or kind.startswith("alias"):
            continue
        k = key[len(prefix):]
        k = re.sub(r"^backbone\.nets\.(\d)", lambda m: "backbone." + TRUNK[m.group(1)], k)
        k = k.replace("nets.3.", "out.")
        out[k] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return out


@pytest.mark.skipif(not KEYS.is_file(), reason="shared fixtures not present")
def test_group_norm_encoder_matches_robomimic_structure():
    ref = _robomimic_image_keys()
    with torch.device("meta"):
        enc = ImageEncoder((3, 96, 96), crop_shape=(84, 84), norm="group", softmax_layout="robomimic",
                           num_keypoints=32, feature_dim=64)
    mine = {k: list(v.shape) for k, v in enc.state_dict().items()}
    assert sorted(mine) == sorted(ref)
    assert all(mine[k] == ref[k] for k in ref)
    assert not any("running" in k for k in mine)  # GroupNorm: no running stats


def test_torchvision_names_and_batchnorm_buffers():
    enc = ImageEncoder((3, 64, 64), norm="batch", pool="avg", feature_dim=8)
    keys = set(enc.state_dict())
    for k in ("backbone.conv1.weight", "backbone.bn1.running_mean", "backbone.layer1.0.conv1.weight",
              "backbone.layer2.0.downsample.0.weight", "backbone.layer2.0.downsample.1.running_var",
              "backbone.layer4.1.bn2.num_batches_tracked", "out.weight"):
        assert k in keys, k
    assert not any(k.startswith(("backbone.fc", "backbone.avgpool")) for k in keys)
    assert "backbone.layer1.0.downsample.0.weight" not in keys
    # Frozen BN: train mode still uses running statistics, so output does not depend on the batch.
    enc.train()
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(enc(x)[:1], enc(x[:1]), rtol=1e-5, atol=1e-6)


def test_width_option_keeps_names_and_scales_channels():
    slim = ImageEncoder((3, 96, 96), crop_shape=(84, 84), width=16, num_keypoints=16, feature_dim=32)
    full = ImageEncoder((3, 96, 96), crop_shape=(84, 84))
    assert set(slim.state_dict()) == set(full.state_dict())
    assert slim.state_dict()["backbone.layer4.1.conv2.weight"].shape == (128, 128, 3, 3)
    assert slim(torch.randn(2, 3, 96, 96)).shape == (2, 32)


@pytest.mark.skipif(not LEROBOT.is_file(), reason="shared fixtures not present")
def test_lerobot_pos_grid_is_bit_identical():
    from safetensors.torch import load_file

    stored = load_file(str(LEROBOT))["diffusion.rgb_encoder.pool.pos_grid"]
    h, w = ResNet18Trunk.feature_map_size(84, 84)
    mine = SpatialSoftmax(512, h, w, 32, layout="lerobot").pos_grid
    assert torch.equal(mine, stored)


def test_keypoints_are_x_then_y_per_keypoint_with_x_fastest():
    ss = SpatialSoftmax(2, 3, 4, num_kp=None, layout="lerobot")
    feat = torch.full((1, 2, 3, 4), -1e4)
    feat[0, 0, 0, 3] = 0.0   # channel 0 peaks at row 0, col 3 -> x=+1, y=-1
    feat[0, 1, 2, 0] = 0.0   # channel 1 peaks at row 2, col 0 -> x=-1, y=+1
    out = ss(feat)
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0, -1.0, 1.0]]))
    rm = SpatialSoftmax(2, 3, 4, num_kp=None, layout="robomimic")
    torch.testing.assert_close(rm(feat), out)
    assert rm.pos_x.shape == (1, 12) and rm.temperature.shape == (1,)


def test_robomimic_and_lerobot_layouts_agree_numerically():
    torch.manual_seed(0)
    a = SpatialSoftmax(8, 3, 3, 4, layout="lerobot")
    b = SpatialSoftmax(8, 3, 3, 4, layout="robomimic")
    b.nets.load_state_dict(a.nets.state_dict())
    x = torch.randn(5, 8, 3, 3)
    torch.testing.assert_close(a(x), b(x), rtol=1e-6, atol=1e-6)
    b.temperature.fill_(2.0)
    assert not torch.allclose(a(x), b(x))


def test_center_crop_offsets_like_torchvision():
    img = torch.arange(96 * 96, dtype=torch.float32).reshape(1, 1, 96, 96)
    c = center_crop(img, 84, 84)
    assert c[0, 0, 0, 0] == img[0, 0, 6, 6] and c.shape[-2:] == (84, 84)
    odd = torch.arange(7 * 9, dtype=torch.float32).reshape(1, 7, 9)
    c = center_crop(odd, 4, 4)  # round(1.5)=2, round(2.5)=2 (Python rounds half to even, as torchvision)
    assert c[0, 0, 0] == odd[0, 2, 2]
    with pytest.raises(ValueError):
        center_crop(odd, 8, 4)


def test_observation_encoder_order_and_per_camera_encoders():
    torch.manual_seed(0)
    kw = dict(crop_shape=(32, 32), width=16, num_keypoints=4, feature_dim=5)
    shapes = {"top": (3, 40, 40), "wrist": (3, 40, 40)}
    obs = {"top": torch.randn(2, 3, 3, 40, 40), "wrist": torch.randn(2, 3, 3, 40, 40), "s": torch.randn(2, 3, 2)}
    enc = ObservationEncoder(shapes, {"s": 2}, feature_order=["top", "s", "wrist"], shared=False, **kw).eval()
    assert len(enc.image_encoders) == 2 and enc.output_dim(3) == 3 * 12
    with torch.no_grad():
        g = enc(obs).reshape(2, 3, 12)
        top = enc.image_encoders[0](obs["top"].reshape(6, 3, 40, 40)).reshape(2, 3, 5)
        wrist = enc.image_encoders[1](obs["wrist"].reshape(6, 3, 40, 40)).reshape(2, 3, 5)
    torch.testing.assert_close(g[..., :5], top)
    assert torch.equal(g[..., 5:7], obs["s"])
    torch.testing.assert_close(g[..., 7:], wrist)
    shared = ObservationEncoder(shapes, {"s": 2}, shared=True, **kw).eval()
    assert len(shared.image_encoders) == 1 and shared.feature_order == ["s", "top", "wrist"]
    with torch.no_grad():
        g2 = shared(obs).reshape(2, 3, 12)
        wrist2 = shared.image_encoders[0](obs["wrist"].reshape(6, 3, 40, 40)).reshape(2, 3, 5)
    torch.testing.assert_close(g2[..., 7:], wrist2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="feature_order"):
        ObservationEncoder(shapes, {"s": 2}, feature_order=["top", "s"], **kw)


def test_lowdim_only_is_flattened_state_oldest_first():
    enc = ObservationEncoder({}, {"obs": 3})
    x = torch.arange(12, dtype=torch.float32).reshape(1, 2, 6)[..., :3].contiguous()
    out = enc({"obs": x})
    assert torch.equal(out, x.reshape(1, 6))
