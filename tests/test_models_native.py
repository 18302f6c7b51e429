"""Native checkpoint round trip, corrupted directories, presets and spec parsing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from models.native import NativeCheckpointError, load_native, read_spec, save_native
from models.policy import DiffusionPolicy
from models.presets import list_presets, load_preset
from models.spec import EncoderSpec, NormalizationSpec, PolicySpec, SpecError, UnetSpec


def tiny_spec() -> PolicySpec:
    return PolicySpec(
        action_dim=3,
        image_features={"observation.images.top": [3, 36, 36]},
        state_features={"observation.state": [3]},
        encoder=EncoderSpec(width=16, num_keypoints=4, feature_dim=8, crop_shape=[32, 32], softmax_layout="robomimic"),
        unet=UnetSpec(down_dims=[16, 32], diffusion_step_embed_dim=16),
        scheduler={"kind": "ddim", "num_inference_steps": 4},
        normalization=NormalizationSpec("original", {"observation.images.top": "min_max"}),
        feature_order=["observation.images.top", "observation.state"],
        action_period=0.05,
        source="test",
        provenance={"note": "unit test"},
    )


def _obs(rng):
    return {"observation.images.top": rng.integers(0, 256, (2, 36, 36, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=(2, 3)).astype(np.float32)}


@pytest.fixture()
def saved(tmp_path: Path):
    torch.manual_seed(0)
    policy = DiffusionPolicy(tiny_spec())
    policy.normalizers["observation.state"].set_stats(scale=[0.5, 2.0, 1.0], offset=[0.1, -0.2, 0.0])
    policy.normalizers["action"].set_stats(scale=[0.01, 0.02, 0.03], offset=[-1.0, -1.0, -1.0])
    out = save_native(policy, tmp_path / "ckpt")
    return policy, out


def test_round_trip_gives_identical_chunks(saved):
    policy, path = saved
    assert sorted(os.listdir(path)) == ["model.safetensors", "policy.yaml"]
    loaded = load_native(path)
    assert loaded.spec.to_dict() == policy.spec.to_dict()
    rng = np.random.default_rng(0)
    obs = _obs(rng)
    noise = rng.normal(size=(16, 3)).astype(np.float32)
    assert np.array_equal(loaded.predict_chunk(obs, noise), policy.predict_chunk(obs, noise))
    for k, v in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    doc = yaml.safe_load((path / "policy.yaml").read_text())
    assert doc["format"] == "edgedp-native" and doc["provenance"]["note"] == "unit test"
    assert load_native(path, num_inference_steps=2).num_inference_steps == 2


def test_save_replaces_atomically_and_refuses_foreign_dirs(saved, tmp_path):
    policy, path = saved
    save_native(policy, path)  # overwrite an existing checkpoint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp/old dirs left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    with pytest.raises(NativeCheckpointError, match="not a native checkpoint"):
        save_native(policy, other)
    assert (other / "readme.txt").read_text() == "mine"


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    policy = DiffusionPolicy(tiny_spec())
    import models.native as native

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(native.yaml, "safe_dump", boom)  # fault a real disk cannot be told to produce
    with pytest.raises(OSError):
        save_native(policy, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def _corrupt(path: Path, mutate) -> None:
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    mutate(tensors)
    save_file(tensors, str(f))


@pytest.mark.parametrize("mutate,msg", [
    (lambda t: t.pop("unet.final_conv.1.bias"), "missing tensor 'unet.final_conv.1.bias'"),
    (lambda t: t.update({"unet.extra": torch.zeros(1)}), "unexpected tensor 'unet.extra'"),
    (lambda t: t.update({"unet.final_conv.1.bias": torch.zeros(4)}), "has shape (4,), the spec needs (3,)"),
])
def test_corrupted_weights_give_one_line_errors(saved, mutate, msg):
    _, path = saved
    _corrupt(path, mutate)
    with pytest.raises(NativeCheckpointError) as err:
        load_native(path)
    assert msg in str(err.value) and "model.safetensors" in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupted_files_give_one_line_errors(saved):
    _, path = saved
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(NativeCheckpointError, match="unreadable safetensors"):
        load_native(path)
    spec_text = (path / "policy.yaml").read_text()
    (path / "policy.yaml").write_text("format: edgedp-native\nspec: [unclosed\n")
    with pytest.raises(NativeCheckpointError, match="invalid YAML") as err:
        read_spec(path)
    assert "\n" not in str(err.value)
    (path / "policy.yaml").write_text(spec_text.replace("horizon: 16", "horizon: 15"))
    with pytest.raises(NativeCheckpointError, match="horizon"):
        read_spec(path)
    (path / "policy.yaml").write_text(spec_text.replace("kind: ddim", "kind: ddpx"))
    with pytest.raises(NativeCheckpointError, match="spec.scheduler: .*ddpx"):
        read_spec(path)
    (path / "policy.yaml").write_text(spec_text.replace("format_version: 1", "format_version: 9"))
    with pytest.raises(NativeCheckpointError, match="format_version 9"):
        read_spec(path)
    (path / "policy.yaml").unlink()
    with pytest.raises(NativeCheckpointError, match="policy.yaml: missing"):
        load_native(path)


def test_presets_build_and_have_documented_sizes():
    assert {"pusht_paper", "real_robot", "small"} <= set(list_presets())
    counts = {}
    for name in ("pusht_paper", "real_robot", "small"):
        spec = load_preset(name)
        assert spec.source == f"preset:{name}"
        with torch.device("meta"):
            counts[name] = DiffusionPolicy(spec).parameter_counts()
    assert counts["pusht_paper"]["unet"] == 251_511_938
    assert counts["pusht_paper"]["obs_encoder"] == 11_197_088
    assert counts["small"]["total"] < 3_000_000
    assert load_preset("real_robot").encoder.crop_shape == [216, 288]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_preset("nope")


@pytest.mark.parametrize("patch,msg", [
    ({"horizn": 16}, "horizn: unknown field"),
    ({"action_dim": "two"}, "action_dim: expected int"),
    ({"encoder": {"norm": "layer"}}, "encoder.norm"),
    ({"encoder": {"crop_shape": [100, 100]}}, "encoder.crop_shape"),
    ({"unet": {"down_dims": [16, 32, 64, 128, 256, 512]}}, "horizon: must be divisible"),
    ({"normalization": {"modes": {"nope": "min_max"}}}, "normalization.modes.nope"),
    ({"n_action_steps": 16}, "n_action_steps"),
    ({"image_features": {"cam": [1, 96, 96]}}, "image_features.cam"),
])
def test_spec_errors_name_the_field(patch, msg):
    d = load_preset("small").to_dict()
    for k, v in patch.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "image_features" else v
    with pytest.raises(SpecError, match=msg.replace("(", r"\(")):
        PolicySpec.from_dict(d)
