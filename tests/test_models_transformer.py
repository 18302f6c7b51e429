"""The transformer denoiser (models/transformer1d.py) and transformer policies.

Module parity against the original TransformerForDiffusion uses tests/fixtures/transformer/
modules.npz (made by the reference code; see tests/reference/make_original_transformer.py):
causal and full attention, MLP and attention condition encoders, the encoder-only form with the
time token as input. The rest checks behaviour a broken implementation gets wrong: the masks
matter, the split q/k/v projection computes the same, the spec refuses what cannot run, native
save/load and the preset round-trip exactly, and `edgedp import` of an original transformer
checkpoint gives the same actions as the in-memory import.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.native import load_native, read_spec, save_native
from models.policy import DiffusionPolicy
from models.presets import load_preset
from models.spec import PolicySpec, SpecError
from models.transformer1d import TransformerForDiffusion, causal_mask, condition_mask

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "transformer"
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _module_cases() -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    try:
        from make_original_transformer import MODULE_CASES
    finally:
        sys.path.pop(0)
    return MODULE_CASES


def _modules_npz() -> dict:
    path = FIXTURES / "modules.npz"
    if not path.is_file():
        msg = f"reference fixture {path} is missing (tests/reference/make_original_transformer.py makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return dict(np.load(path))


def _reference_module(z: dict, name: str, kw: dict) -> TransformerForDiffusion:
    m = TransformerForDiffusion(**kw).eval()
    prefix = f"{name}/sd/"
    sd = {k[len(prefix):]: torch.from_numpy(v) for k, v in z.items()
          if k.startswith(prefix) and not k.endswith("_dummy_variable")}
    m.load_state_dict(sd, strict=True)  # the reference's key names, nothing renamed
    return m


@pytest.mark.parametrize("name", list(_module_cases()))
def test_module_matches_reference(name):
    kw = _module_cases()[name]
    z = _modules_npz()
    m = _reference_module(z, name, kw)
    x = torch.from_numpy(z[f"{name}/x"])
    cond = torch.from_numpy(z[f"{name}/cond"]).reshape(x.shape[0], -1) if f"{name}/cond" in z else None
    with torch.inference_mode():
        for t, key in ((torch.tensor(7), "out_t7"), (torch.tensor([0, 99]), "out_t0_99"), (42, "out_int42")):
            np.testing.assert_allclose(m(x, t, cond).numpy(), z[f"{name}/{key}"], rtol=0, atol=TOL, err_msg=key)


def test_masks_are_the_references_and_they_matter():
    assert torch.equal(causal_mask(3), torch.tensor([[0.0, -np.inf, -np.inf], [0.0, 0.0, -np.inf], [0.0, 0.0, 0.0]]))
    # action token t sees the time token and observations 0..t (condition index s = observation + 1)
    allowed = torch.isfinite(condition_mask(4, 3))
    assert allowed.tolist() == [[True, True, False], [True, True, True], [True, True, True], [True, True, True]]
    z = _modules_npz()
    name = "causal_mlp"
    m = _reference_module(z, name, _module_cases()[name])
    x = torch.from_numpy(z[f"{name}/x"])
    cond = torch.from_numpy(z[f"{name}/cond"]).reshape(x.shape[0], -1)
    with torch.inference_mode():
        m.memory_mask = None
        assert np.abs(m(x, torch.tensor(7), cond).numpy() - z[f"{name}/out_t7"]).max() > 1e-3
        m.memory_mask, m.mask = condition_mask(m.n_tokens, m.n_cond), None
        assert np.abs(m(x, torch.tensor(7), cond).numpy() - z[f"{name}/out_t7"]).max() > 1e-3
        # causal: an action token's output does not depend on later tokens
        m.mask = causal_mask(m.n_tokens)
        x2 = x.clone()
        x2[:, 5:] += 1.0
        np.testing.assert_allclose(m(x2, 7, cond)[:, :5].numpy(), m(x, 7, cond)[:, :5].numpy(), rtol=0, atol=1e-6)


def test_split_in_projections_computes_the_same():
    torch.manual_seed(0)
    m = TransformerForDiffusion(3, 3, 8, 2, 5, n_layer=2, n_head=4, n_emb=32, n_cond_layers=1).eval()
    x, g = torch.randn(2, 8, 3), torch.randn(2, 10)
    with torch.inference_mode():
        want = m(x, torch.tensor([3, 50]), g)
        m.split_in_projections()
        got = m(x, torch.tensor([3, 50]), g)
    assert not any(n.endswith("in_proj_weight") for n, _ in m.named_parameters())
    assert sum(isinstance(mod, torch.nn.Linear) for mod in m.modules()) > 0
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)


def test_init_follows_the_reference():
    torch.manual_seed(0)
    m = TransformerForDiffusion(2, 2, 16, 2, 10, n_layer=2, n_emb=64)
    attn = m.decoder.layers[0].self_attn
    m.requires_grad_(False)
    assert abs(float(attn.in_proj_weight.std()) - 0.02) < 0.003 and float(attn.in_proj_bias.abs().max()) == 0.0
    assert abs(float(m.head.weight.std()) - 0.02) < 0.01 and float(m.ln_f.weight.min()) == 1.0
    assert float(m.cond_pos_emb.std()) > 0.01  # initialised (observation condition present)
    m.train()
    x, g = torch.randn(1, 16, 2), torch.randn(1, 20)
    m.decoder.layers[0].dropout1.p = 0.5
    assert not torch.equal(m(x, 3, g), m(x, 3, g))  # dropout acts in training, not in eval
    m.eval()
    assert torch.equal(m(x, 3, g), m(x, 3, g))


def _spec_dict(**transformer) -> dict:
    d = load_preset("transformer_small").to_dict()
    d["transformer"].update(transformer)
    return d


@pytest.mark.parametrize("change, needle", [
    ({"time_as_cond": False}, "transformer.time_as_cond"),
    ({"n_emb": 100, "n_head": 3}, "transformer.n_emb"),
    ({"p_drop_attn": 1.0}, "transformer.p_drop_attn"),
    ({"n_layr": 2}, "transformer.n_layr: unknown field"),
])
def test_spec_refuses_by_field(change, needle):
    with pytest.raises(SpecError) as err:
        PolicySpec.from_dict(_spec_dict(**change))
    assert needle in str(err.value)


def test_spec_sections_follow_the_denoiser():
    d = _spec_dict()
    assert "unet" not in d and d["denoiser"] == "transformer"
    assert "transformer" not in load_preset("small").to_dict()  # U-Net files are written as before
    with pytest.raises(SpecError, match="unet: not used with denoiser: transformer"):
        PolicySpec.from_dict({**d, "unet": {"down_dims": [8, 16]}})
    with pytest.raises(SpecError, match="denoiser: allowed unet, transformer"):
        PolicySpec.from_dict({**d, "denoiser": "mlp"})


@pytest.mark.parametrize("preset, n_params", [("transformer_small", 1_197_826), ("transformer_pusht", 8_975_362)])
def test_presets_build_with_their_sizes(preset, n_params):
    p = DiffusionPolicy(load_preset(preset))
    assert p.parameter_counts()["denoiser"] == p.parameter_counts()["transformer"] == n_params
    assert p.denoiser is p.transformer and p.global_cond_dim == p.n_obs_steps * p.obs_encoder.per_frame_dim


def _obs(policy, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: rng.integers(0, 255, (policy.n_obs_steps, s[1], s[2], 3), dtype=np.uint8)
           for k, s in policy.spec.image_features.items()}
    obs.update({k: rng.normal(size=(policy.n_obs_steps, s[0])).astype(np.float32)
                for k, s in policy.spec.state_features.items()})
    return obs


def test_native_round_trip_is_exact(tmp_path):
    src = DiffusionPolicy(load_preset("transformer_small"), seed=3)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = save_native(src, tmp_path / "tf")
    spec, doc = read_spec(out)
    assert spec.denoiser == "transformer" and "unet" not in doc["spec"]
    got = load_native(out)
    assert set(got.state_dict()) == set(src.state_dict())
    noise = np.random.default_rng(1).normal(size=(16, 2)).astype(np.float32)
    obs = _obs(src)
    np.testing.assert_array_equal(got.predict_chunk(obs, noise), src.predict_chunk(obs, noise))


def test_training_loss_reaches_the_transformer():
    pol = DiffusionPolicy(load_preset("transformer_small"))
    pol.train()
    obs = {k: torch.from_numpy(v)[None] for k, v in _obs(pol).items()}
    loss = pol.compute_loss(obs, torch.randn(1, pol.horizon, pol.action_dim), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert pol.transformer.decoder.layers[0].multihead_attn.in_proj_weight.grad.abs().sum() > 0
    assert pol.obs_encoder.image_encoders[0].out.weight.grad.abs().sum() > 0


def test_edgedp_import_of_an_original_transformer_ckpt(tmp_path):
    ck = FIXTURES / "lowdim_causal" / "checkpoint.ckpt"
    if not ck.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{ck} missing")
        pytest.skip(f"{ck} missing (tests/reference/make_original_transformer.py)")
    out = tmp_path / "native"
    r = subprocess.run([sys.executable, "-m", "edgedp.cli", "import", str(ck), "--out", str(out), "--scheduler", "ddim",
                        "--steps", "10"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    assert doc["spec"]["denoiser"] == "transformer" and doc["spec"]["transformer"]["n_layer"] == 2
    e = np.load(FIXTURES / "lowdim_causal" / "expected.npz")
    pol = load_native(out)
    chunk = pol.predict_chunk({"obs": e["obs"][0]}, noise=e["ddim10_noise"][0])
    rng = float(e["ddim10_action_pred"].max() - e["ddim10_action_pred"].min())
    np.testing.assert_allclose(chunk, e["ddim10_action_pred"][0], rtol=0, atol=1e-5 * max(rng, 1.0))
