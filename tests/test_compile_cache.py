"""Cache hit / miss / stale logic, atomic entries, and reload equality."""
from __future__ import annotations

import json

import pytest
import torch

from edgedp.compile import cache as cache_mod
from edgedp.compile.api import compile_policy, get_compiled_sampler
from tests.test_compile_backends import _one_thread, tiny_policy  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def policy():
    return tiny_policy()


def test_miss_then_hit_then_reload_is_identical(policy, tmp_path):
    first = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, gate_samples=2)
    assert first.state == "miss" and first.gate is not None and first.gate.passed
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["key"]["backend"] == "cpu-int8" and manifest["key"]["steps"] == 4
    assert "torch" in manifest["key"]["versions"] and "denoiser_int8.safetensors" in manifest["files"]
    second = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path)
    assert second.state == "hit" and second.path == first.path
    g = torch.randn(1, policy.global_cond_dim)
    x = torch.randn(1, policy.horizon, policy.action_dim)
    torch.testing.assert_close(second.sampler(g, x), first.sampler(g, x), rtol=0, atol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary build dirs left behind"


def test_key_separates_k_precision_and_weights(policy, tmp_path):
    a = compile_policy(policy, "eager", "fp32", 4, "cpu", tmp_path)
    b = compile_policy(policy, "eager", "fp32", 2, "cpu", tmp_path)
    assert a.path != b.path and b.state == "miss"
    other = tiny_policy(seed=1)
    c = compile_policy(other, "eager", "fp32", 4, "cpu", tmp_path)
    assert c.state == "miss" and c.path != a.path
    assert cache_mod.weights_hash(policy) != cache_mod.weights_hash(other)
    assert cache_mod.weights_hash(policy) == cache_mod.weights_hash(tiny_policy(seed=0))


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage,reason", [
    (lambda m: m["key"]["versions"].__setitem__("torch", "1.0.0"), "torch 1.0.0 ->"),
    (lambda m: m.__setitem__("format", 0), "cache format"),
    (lambda m: m["key"].__setitem__("weights_sha256", "0" * 64), "weights_sha256 changed"),
])
def test_stale_entries_are_rebuilt(policy, tmp_path, damage, reason):
    first = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, gate_samples=2)
    _edit_manifest(first.path, damage)
    again = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, gate_samples=2)
    assert again.state == "stale" and reason in again.reason
    assert compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path).state == "hit"


def test_missing_artifact_is_stale(policy, tmp_path):
    first = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, gate_samples=2)
    (first.path / "denoiser_int8.safetensors").unlink()
    again = compile_policy(policy, "cpu-int8", "int8", 4, "cpu", tmp_path, gate_samples=2)
    assert again.state == "stale" and "missing" in again.reason
    assert (again.path / "denoiser_int8.safetensors").is_file()


def test_get_compiled_sampler_uses_cache(policy, tmp_path):
    cs = get_compiled_sampler(policy, "eager", "fp32", 4, "cpu", tmp_path)
    assert cs.backend == "eager" and cs.steps == 4
    assert len([p for p in tmp_path.iterdir() if (p / "manifest.json").is_file()]) == 1
    assert cache_mod.lookup(tmp_path, cache_mod.make_key(cache_mod.weights_hash(policy), "eager", "fp32", 4,
                                                         torch.device("cpu"), {"torch": torch.__version__})).state == "hit"


def test_loop_sampler_gets_its_own_folder():
    """onnxruntime-loop bakes the sampler into its graph: a DDIM and a DPM-Solver++ build of the same weights and K
    live side by side (one folder each) instead of each rebuilding over the other; other backends keep one folder."""
    cpu = torch.device("cpu")
    ddim = cache_mod.make_key("ab" * 32, "onnxruntime-loop", "fp32", 4, cpu, {}, {"loop-sampler": "ddim/eta=0.0/"})
    dpm = cache_mod.make_key("ab" * 32, "onnxruntime-loop", "fp32", 4, cpu, {},
                             {"loop-sampler": "dpmsolver++/eta=0.0//timesteps=90-60-16-2"})
    assert ddim.dirname() != dpm.dirname() and ddim.dirname().startswith(dpm.dirname()[:-10])
    plain = cache_mod.make_key("ab" * 32, "cpu-int8", "int8", 4, cpu, {"torch": "2.13.0"})
    assert plain.dirname() == f"{'ab' * 8}-cpu-int8-int8-K4-{cache_mod.device_tag(cpu)}"
