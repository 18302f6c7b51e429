"""DiffusionPolicy end to end: LeRobot fixture parity through our modules, input conversions, seeding, errors."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.policy import DiffusionPolicy, PolicyInputError
from models.spec import EncoderSpec, NormalizationSpec, PolicySpec, UnetSpec

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
PUSHT = FIXTURES / "lerobot" / "pusht_1cam"
TRUNK = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def small_spec(**over) -> PolicySpec:
    d = dict(
        action_dim=2,
        image_features={"cam": [3, 40, 48]},
        state_features={"joints": [2]},
        encoder=EncoderSpec(width=16, num_keypoints=4, feature_dim=8, crop_shape=[32, 40]),
        unet=UnetSpec(down_dims=[16, 32], diffusion_step_embed_dim=16),
        scheduler={"kind": "ddim", "num_inference_steps": 3},
    )
    d.update(over)
    return PolicySpec(**d)


def small_obs(rng: np.random.Generator) -> dict:
    return {"cam": rng.integers(0, 256, size=(2, 40, 48, 3), dtype=np.uint8),
            "joints": rng.normal(size=(2, 2)).astype(np.float32)}


def _lerobot_policy() -> DiffusionPolicy:
    """The pusht_1cam fixture loaded with an inline renaming (the real importer lives in checkpoint_import)."""
    from safetensors.torch import load_file

    spec = PolicySpec(
        action_dim=2, image_features={"observation.image": [3, 96, 96]}, state_features={"observation.state": [2]},
        encoder=EncoderSpec(crop_shape=[84, 84]), unet=UnetSpec(down_dims=[64, 128, 256]),
        scheduler={"kind": "ddim", "num_inference_steps": 10},
        normalization=NormalizationSpec("lerobot", {"observation.image": "mean_std"}),
    )
    policy = DiffusionPolicy(spec)
    sd = {}
    for k, v in load_file(str(PUSHT / "pretrained_model" / "model.safetensors")).items():
        if k.startswith("diffusion.rgb_encoder."):
            k = re.sub(r"^backbone\.(\d)", lambda m: "backbone." + TRUNK[m.group(1)], k[len("diffusion.rgb_encoder."):])
            k = "obs_encoder.image_encoders.0." + k
        else:
            k = k[len("diffusion.unet."):]
            k = re.sub(r"\.conv([12])\.", lambda m: f".blocks.{int(m.group(1)) - 1}.", k)
            k = "unet." + re.sub(r"_modules\.(\d+)\.2\.", r"_modules.\1.2.conv.", k)
        sd[k] = v
    stats = load_file(str(PUSHT / "pretrained_model" / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    for key in ("observation.state", "action"):
        policy.normalizers[key].set_stats(min=stats[f"{key}.min"], max=stats[f"{key}.max"])
    policy.normalizers["observation.image"].set_stats(mean=stats["observation.image.mean"],
                                                      std=stats["observation.image.std"])
    missing, unexpected = policy.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("normalizers.") for k in missing)
    return policy


@pytest.mark.skipif(not PUSHT.is_dir(), reason="shared fixtures not present")
def test_lerobot_fixture_parity_through_our_modules():
    exp = np.load(PUSHT / "expected.npz")
    policy = _lerobot_policy()
    obs = {"observation.image": exp["raw.observation.image"], "observation.state": exp["raw.observation.state"]}
    gc = policy.encode(obs)
    np.testing.assert_allclose(gc.numpy(), exp["global_cond"], rtol=0, atol=1e-6)
    assert np.array_equal(gc.numpy()[0, :2], exp["global_cond"][0, :2])  # the normalized state part: exact
    with torch.inference_mode():
        for i in range(4):
            out = policy.denoise(torch.from_numpy(exp["probe_x"][i:i + 1]), torch.tensor([exp["probe_k"][i]]),
                                 torch.from_numpy(exp["global_cond"]))
            np.testing.assert_allclose(out.numpy(), exp["probe_out"][i:i + 1], rtol=0, atol=1e-5)
        traj_norm = policy.sample(gc, torch.from_numpy(exp["noise"]))
    np.testing.assert_allclose(traj_norm.numpy(), exp["traj_norm"], rtol=0, atol=1e-5)
    raw = policy.unnormalize_action(traj_norm)
    np.testing.assert_allclose(raw.numpy(), exp["traj"], rtol=0, atol=1e-5 * 500)  # 1e-5 of the action range
    # The public call, fed uint8 HWC frames as a camera gives them: same result as the float path.
    obs8 = {"observation.image": exp["uint8.observation.image"], "observation.state": exp["raw.observation.state"]}
    chunk = policy.predict_chunk(obs8, exp["noise"])
    assert chunk.shape == (16, 2) and chunk.dtype == np.float32
    assert np.array_equal(chunk, raw.numpy()[0])
    np.testing.assert_allclose(chunk[policy.action_slice], exp["chunk"][0], rtol=0, atol=1e-5 * 500)


def test_image_conversions_are_equivalent():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_spec())
    obs = small_obs(np.random.default_rng(0))
    noise = np.random.default_rng(1).normal(size=(16, 2)).astype(np.float32)
    ref = policy.predict_chunk(obs, noise)
    chw_u8 = np.ascontiguousarray(obs["cam"].transpose(0, 3, 1, 2))
    as_float = chw_u8.astype(np.float32) / 255.0
    cond = policy.encode(obs)
    for img in (chw_u8, as_float, torch.from_numpy(as_float), as_float[None]):
        assert torch.equal(policy.encode({**obs, "cam": img}), cond)  # conversion only touches encode
    assert np.array_equal(policy.predict_chunk(obs, torch.from_numpy(noise)[None]), ref)


def test_seeded_noise_and_action_slice():
    torch.manual_seed(0)
    spec = small_spec(n_obs_steps=3, horizon=16, n_action_steps=5)
    obs = small_obs(np.random.default_rng(0))
    obs = {"cam": np.concatenate([obs["cam"], obs["cam"][:1]]), "joints": np.zeros((3, 2), np.float32)}
    a = DiffusionPolicy(spec, seed=7)
    b = DiffusionPolicy(spec, seed=7)
    b.load_state_dict(a.state_dict())
    first = a.predict_chunk(obs)
    assert np.array_equal(first, b.predict_chunk(obs))          # same seed, same draws
    assert not np.array_equal(first, a.predict_chunk(obs))      # the generator moves on
    assert a.action_slice == slice(2, 7)
    a.reseed(7)
    assert np.array_equal(a.predict_action(obs), first[2:7])


def test_ddpm_policy_draws_variance_noise_from_its_generator():
    torch.manual_seed(0)
    spec = small_spec(scheduler={"kind": "ddpm", "num_train_timesteps": 20})
    p = DiffusionPolicy(spec, seed=3)
    assert p.stochastic and p.num_inference_steps == 20
    obs = small_obs(np.random.default_rng(0))
    noise = np.zeros((16, 2), np.float32)
    x = p.predict_chunk(obs, noise)
    p.reseed(3)
    assert np.array_equal(p.predict_chunk(obs, noise), x)
    p.set_num_inference_steps(5)
    assert p.num_inference_steps == 5


def test_bad_inputs_name_the_problem():
    policy = DiffusionPolicy(small_spec())
    obs = small_obs(np.random.default_rng(0))
    cases = [
        ({"joints": obs["joints"]}, "missing feature 'cam'"),
        ({**obs, "cam": obs["cam"][:1]}, "'cam': expected shape"),
        ({**obs, "joints": np.zeros((2, 3), np.float32)}, "'joints': expected shape"),
        ({**obs, "joints": np.array([[np.nan, 0], [0, 0]], np.float32)}, "NaN"),
        ({**obs, "cam": obs["cam"].astype(np.int32)}, "uint8 or float"),
    ]
    for bad, msg in cases:
        with pytest.raises(PolicyInputError, match=re.escape(msg)):
            policy.predict_chunk(bad)
    with pytest.raises(PolicyInputError, match="noise"):
        policy.predict_chunk(obs, np.zeros((8, 2), np.float32))


def test_state_dict_has_no_sampler_or_alias_keys():
    p = DiffusionPolicy(small_spec())
    _ = p.sampler
    keys = list(p.state_dict())
    assert all(k.startswith(("normalizers.", "obs_encoder.", "unet.")) for k in keys)
    p.to(torch.float64)
    assert p.sampler.timesteps.dtype == torch.int64
    out = p.predict_chunk(small_obs(np.random.default_rng(0)))
    assert out.dtype == np.float32


def test_compute_loss_trains_and_train_mode_crops_randomly():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_spec(scheduler={"kind": "ddim", "num_inference_steps": 3}))
    rng = np.random.default_rng(0)
    obs = {"cam": rng.integers(0, 256, (2, 2, 40, 48, 3), dtype=np.uint8),
           "joints": rng.normal(size=(2, 2, 2)).astype(np.float32)}
    action = rng.uniform(-1, 1, size=(2, 16, 2)).astype(np.float32)
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        g = torch.Generator().manual_seed(1)  # same k and eps each step: the loss on them must fall
        loss = policy.compute_loss(obs, action, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]
    enc = policy.obs_encoder.image_encoders[0]
    x = torch.rand(6, 3, 40, 48)
    assert not torch.equal(enc(x), enc(x))  # random crops while training
    policy.eval()
    assert torch.equal(enc(x), enc(x))      # center crop at inference
    with pytest.raises(PolicyInputError, match="action: expected shape"):
        policy.compute_loss(obs, action[:, :8])
