"""The accuracy gate refuses a build over the threshold, the override accepts it, and calibration data is read."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedp.compile.api import compile_policy, get_compiled_sampler
from edgedp.compile.quantize import (GateResult, observation_sets, recorded_observations, sensitive_layers,
                                     synthetic_observations)
from edgedp.errors import UserError
from tests.test_compile_backends import _one_thread, tiny_policy  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def policy():
    return tiny_policy()


def test_gate_refuses_and_leaves_nothing_cached(policy, tmp_path):
    with pytest.raises(UserError) as err:
        compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, max_rmse=1e-7, gate_samples=2)
    msg = str(err.value)
    assert "\n" not in msg and "RMSE" in msg and "--allow-inaccurate" in msg and "EXCEEDS" in msg
    assert not any(tmp_path.iterdir()), "a refused build must not leave a cache entry"


def test_override_caches_and_records_it(policy, tmp_path):
    rep = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, max_rmse=1e-7, gate_samples=2,
                         allow_inaccurate=True)
    assert rep.gate is not None and not rep.gate.passed and rep.manifest["allowed_inaccurate"] is True
    # The user's override is remembered for the same limits; stricter limits are re-checked and refused.
    assert compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, max_rmse=1e-7).state == "hit"
    with pytest.raises(UserError):
        compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, max_rmse=1e-8, gate_samples=2)


def test_default_gate_passes_and_runtime_call_refuses_nothing(policy, tmp_path):
    cs = get_compiled_sampler(policy, "cpu-int8", "int8", 4, "cpu", tmp_path)
    assert cs.precision == "int8"


def test_gate_result_logic():
    ok = GateResult(0.01, 0.05, 0.02, 0.1, 4, "synthetic")
    bad_max = GateResult(0.01, 0.2, 0.02, 0.1, 4, "synthetic")
    assert ok.passed and not bad_max.passed
    assert "within" in ok.line() and "EXCEEDS" in bad_max.line()


def test_sensitivity_keeps_layers_float_above_tolerance(policy):
    sets = observation_sets(policy, n_calib=2, n_heldout=2)
    skip, errors = sensitive_layers(policy, sets, 4, tol=0.0)
    assert set(skip) == set(errors) and len(errors) > 10
    skip2, _ = sensitive_layers(policy, sets, 4, tol=1.0)
    assert skip2 == []
    assert all(0 < e < 0.05 for e in errors.values())


def test_recorded_observations_split_and_errors(policy, tmp_path):
    obs = synthetic_observations(policy, 6, seed=3)
    path = tmp_path / "rec.npz"
    np.savez(path, **{"observation.state": np.stack([o["observation.state"] for o in obs])})
    sets = observation_sets(policy, path)
    assert sets.calib.shape == (3, policy.global_cond_dim) and sets.heldout.shape == (3, policy.global_cond_dim)
    assert sets.source.startswith("recorded:")
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros((4, 2, 4)))
    with pytest.raises(UserError, match="lacks feature"):
        recorded_observations(bad, policy)
    with pytest.raises(UserError, match="not found"):
        recorded_observations(tmp_path / "nope.npz", policy)


def test_synthetic_states_stay_inside_normalization_range(policy):
    norm = policy.normalizers["observation.state"]
    norm.set_stats(min=torch.tensor([0.0, -5, 10, 100]), max=torch.tensor([1.0, 5, 20, 300]))
    try:
        for o in synthetic_observations(policy, 4, seed=0):
            z = norm(torch.from_numpy(o["observation.state"]))
            assert float(z.abs().max()) <= 0.9 + 1e-5
    finally:
        norm.set_stats(min=-torch.ones(4), max=torch.ones(4))
