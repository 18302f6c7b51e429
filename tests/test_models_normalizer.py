"""Normalizers: LeRobot fixture arrays reproduced bit-exactly; the original implementation's fit rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.normalizer import FieldNormalizer, NormalizerSet, fit_lerobot, fit_original

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
PUSHT = FIXTURES / "lerobot" / "pusht_1cam"


@pytest.mark.skipif(not PUSHT.is_dir(), reason="shared fixtures not present")
def test_lerobot_preprocessor_outputs_bit_exact():
    from safetensors.torch import load_file

    stats = load_file(str(PUSHT / "pretrained_model" / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    exp = np.load(PUSHT / "expected.npz")
    img = FieldNormalizer("mean_std", "lerobot", (3, 1, 1)).set_stats(
        mean=stats["observation.image.mean"], std=stats["observation.image.std"])
    state = FieldNormalizer("min_max", "lerobot", (2,)).set_stats(
        min=stats["observation.state.min"], max=stats["observation.state.max"])
    assert np.array_equal(img(torch.from_numpy(exp["raw.observation.image"])).numpy(), exp["norm.observation.image"])
    assert np.array_equal(state(torch.from_numpy(exp["raw.observation.state"])).numpy(), exp["norm.observation.state"])
    # The postprocessor's unnormalize of the sampled trajectory gives the stored raw actions.
    post = load_file(str(PUSHT / "pretrained_model" / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    act = FieldNormalizer("min_max", "lerobot", (2,)).set_stats(min=post["action.min"], max=post["action.max"])
    assert np.array_equal(act.unnormalize(torch.from_numpy(exp["traj_norm"])).numpy(), exp["traj"])


def test_lerobot_formulas_and_zero_range():
    n = FieldNormalizer("min_max", "lerobot", (2,)).set_stats(min=[0.0, 5.0], max=[10.0, 5.0])
    y = n(torch.tensor([[5.0, 5.0], [10.0, 6.0]]))
    assert torch.equal(y[:, 0], torch.tensor([0.0, 1.0]))
    assert y[0, 1] == -1.0 and torch.isfinite(y).all()  # 0 range -> denominator 1e-8, no NaN
    x = torch.tensor([[2.5, 5.0]])
    torch.testing.assert_close(n.unnormalize(n(x)), x)
    m = FieldNormalizer("mean_std", "lerobot", (1,)).set_stats(mean=[2.0], std=[4.0])
    assert m(torch.tensor([6.0])).item() == pytest.approx(1.0, abs=1e-7)
    assert m.unnormalize(torch.tensor([1.0])).item() == 6.0


def test_original_fit_limits_with_degenerate_dimension():
    data = torch.tensor([[0.0, 3.0, 10.0], [4.0, 3.00001, 20.0], [2.0, 3.0, 15.0]])
    p = fit_original(data, "min_max")
    # live dims: [min, max] -> [-1, 1]; the near-constant dim (range < 1e-4): scale 1, offset -min.
    torch.testing.assert_close(p["scale"], torch.tensor([0.5, 1.0, 0.2]))
    torch.testing.assert_close(p["offset"], torch.tensor([-1.0, -3.0, -3.0]))
    n = FieldNormalizer("min_max", "original", (3,)).set_stats(**p)
    y = n(data)
    assert y[:, [0, 2]].min() == -1.0 and y[:, [0, 2]].max() == 1.0
    assert y[0, 1] == 0.0
    torch.testing.assert_close(n.unnormalize(y), data)


def test_original_fit_gaussian():
    data = torch.tensor([[1.0, 7.0], [3.0, 7.0]])
    p = fit_original(data, "mean_std")
    std = data[:, 0].std()
    torch.testing.assert_close(p["scale"], torch.tensor([1 / std, 1.0]))
    torch.testing.assert_close(p["offset"], torch.tensor([-2.0 / std, -7.0]))


def test_original_image_scalar_broadcast_and_identity():
    n = FieldNormalizer("min_max", "original", (1,)).set_stats(scale=[2.222226], offset=[-1.111114])
    img = torch.rand(1, 2, 3, 8, 8)
    assert torch.equal(n(img), img * torch.tensor([2.222226]) + torch.tensor([-1.111114]))
    ident = FieldNormalizer("identity", "lerobot", (4,))
    assert ident.buffer_names == () and torch.equal(ident(img), img)


def test_stats_validation_and_set_keys_with_dots():
    n = FieldNormalizer("min_max", "lerobot", (2,))
    with pytest.raises(ValueError, match="missing statistics"):
        n.set_stats(min=[0, 0])
    with pytest.raises(ValueError, match="3 values"):
        n.set_stats(min=[0, 0, 0], max=[1, 1])
    with pytest.raises(ValueError, match="unknown normalization mode"):
        FieldNormalizer("minmax", "lerobot", (2,))
    s = NormalizerSet({"observation.state": FieldNormalizer("min_max", "lerobot", (2,)).set_stats(**fit_lerobot(torch.tensor([[0.0, 0.0], [2.0, 4.0]])))})
    assert "observation.state" in s
    assert "fields.observation__state.max" in s.state_dict()
    assert torch.equal(s["observation.state"].max, torch.tensor([2.0, 4.0]))


def test_statistics_stay_float32_when_the_network_is_cast():
    n = FieldNormalizer("min_max", "lerobot", (2,)).set_stats(min=[13.456424, 32.938293], max=[496.14618, 510.9579])
    before = n.min.clone()
    n.half()
    assert n.min.dtype == torch.float32 and torch.equal(n.min, before)
    y = n(torch.tensor([[100.0, 200.0]], dtype=torch.float16))
    assert y.dtype == torch.float32
