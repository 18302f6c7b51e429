"""U-Net structure against the original implementation's key list, and forward-call conventions."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.unet1d import ConditionalUnet1D, SinusoidalPosEmb

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
KEYS = FIXTURES / "diffusion_policy" / "state_dict_keys.txt"


def _reference(prefix: str) -> dict[str, list[int]]:
    ref = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype, kind = line.split("\t")
        if key.startswith(prefix) and not kind.startswith("alias"):
            ref[key[len(prefix):]] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return ref


@pytest.mark.skipif(not KEYS.is_file(), reason="shared fixtures not present")
def test_paper_unet_keys_and_shapes_match_original():
    ref = _reference("model.")
    # global_cond_dim from the file itself: cond_encoder input = step embed (128) + global cond.
    cond_dim = ref["mid_modules.0.cond_encoder.1.weight"][1]
    dsed = ref["diffusion_step_encoder.3.weight"][0]
    input_dim = ref["final_conv.1.weight"][0]
    with torch.device("meta"):
        unet = ConditionalUnet1D(input_dim, cond_dim - dsed, dsed, (512, 1024, 2048), 5, 8, True)
    mine = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert sorted(mine) == sorted(ref)
    bad = {k: (mine[k], ref[k]) for k in ref if mine[k] != ref[k]}
    assert not bad
    assert sum(p.numel() for p in unet.parameters()) == 251_511_938


def test_unscaled_film_has_c_channels_and_same_level_has_no_residual_conv():
    unet = ConditionalUnet1D(3, 10, 16, (16, 32), kernel_size=3, n_groups=4, cond_predict_scale=False)
    sd = unet.state_dict()
    assert sd["down_modules.0.0.cond_encoder.1.weight"].shape == (16, 26)
    assert "down_modules.0.1.residual_conv.weight" not in sd
    assert "down_modules.1.2.conv.weight" not in sd  # last level: Identity
    assert sd["down_modules.0.2.conv.weight"].shape == (16, 16, 3)
    assert sd["up_modules.0.2.conv.weight"].shape == (16, 16, 4)


def test_timestep_forms_agree_and_batch_rows_are_independent():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, 6, 16, (16, 32, 64)).eval()
    x = torch.randn(3, 16, 2)
    cond = torch.randn(3, 6)
    with torch.no_grad():
        a = unet(x, 7, cond)
        b = unet(x, torch.tensor(7), cond)
        c = unet(x, torch.full((3,), 7, dtype=torch.long), cond)
        d = unet(x[1:2], torch.tensor([7]), cond[1:2])
        e = unet(x, torch.tensor(8), cond)
    assert a.shape == (3, 16, 2)
    assert torch.equal(a, b) and torch.equal(a, c)
    torch.testing.assert_close(a[1:2], d, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, e)


def test_sinusoidal_embedding_formula():
    emb = SinusoidalPosEmb(8)(torch.tensor([0, 5]))
    freqs = torch.exp(torch.arange(4) * -(torch.log(torch.tensor(10000.0)) / 3))
    want = torch.cat([(5 * freqs).sin(), (5 * freqs).cos()])
    torch.testing.assert_close(emb[1], want)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
