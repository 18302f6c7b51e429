"""onnxruntime-loop int8: the loop graph chosen by measurement, the encoder accepted by its actions.

Checked: an int8 build keeps BOTH loop graphs (float32 and dynamic int8), records the choice with its timings
(loop_choice.json, CompiledSampler.info) and the choice follows the timings; `load` runs the recorded graph
(a choice file forcing the other graph changes the session's file, its actions and weight_bytes), warm start
follows it, and a missing or foreign choice file is refused.  The encoder chooser refuses a fast candidate whose
actions move past its limits and accepts a fast one whose actions do not.  Timings are injected where the
choice is checked (no wall-clock asserts).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from edgedp.compile.api import compile_policy
from edgedp.compile.backends import get_backend
from edgedp.compile.quantize import fixed_noise
from edgedp.policy_loading import load_policy
from tests.test_compile_backends import _one_thread, tiny_policy  # noqa: F401 (autouse fixture)

pytest.importorskip("onnxruntime", reason="onnxruntime (onnx extra) is not installed")
onnx = pytest.importorskip("onnx", reason="onnx (onnx extra) is not installed")

from edgedp.compile import ort_loop  # noqa: E402
from edgedp.compile.base import FloatOut, float_unet_copy, make_loop  # noqa: E402

CPU = torch.device("cpu")


def _int8_count(path) -> int:
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).size for t in model.graph.initializer
               if t.data_type in (TensorProto.INT8, TensorProto.UINT8))


@pytest.fixture(scope="module")
def warm_build(tmp_path_factory):
    """tiny policy with warm start, built int8 (gate off: the gate is test_compile_ort_loop's)."""
    pol = tiny_policy()
    pol.configure_sampler("ddim", warm_start_level=0.5)
    rep = compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path_factory.mktemp("loopchoice"),
                         gate=False, gate_samples=2)
    reason = json.loads((rep.path / "loop_choice.json").read_text()).get("int8_unavailable")
    if reason:
        import onnxruntime
        from packaging.version import Version

        if Version(onnxruntime.__version__) >= Version("1.24"):
            pytest.fail(f"onnxruntime {onnxruntime.__version__} should build the int8 loop graph: {reason}")
        pytest.skip(f"onnxruntime {onnxruntime.__version__} cannot quantize the unrolled loop graph (the build keeps "
                    f"the float32 loop: test_an_int8_build_without_an_int8_loop_keeps_the_float32_one)")
    return pol, rep


def test_both_loop_graphs_are_built_and_the_choice_is_recorded(warm_build):
    pol, rep = warm_build
    recorded = json.loads((rep.path / "loop_choice.json").read_text())
    assert set(recorded["ms"]) == {"fp32", "int8"} and all(v > 0 for v in recorded["ms"].values())
    assert recorded["chosen"] == min(recorded["ms"], key=recorded["ms"].get)
    assert recorded["graphs"] == {"fp32": ["loop.onnx", "loop_warm.onnx"],
                                  "int8": ["loop_int8.onnx", "loop_warm_int8.onnx"]}
    n_weights = sum(p.numel() for n, p in pol.denoiser.named_parameters() if n.endswith("weight"))
    for name in ("loop.onnx", "loop_warm.onnx"):                 # the float32 graphs stay float
        assert _int8_count(rep.path / name) == 0, name
    for name in ("loop_int8.onnx", "loop_warm_int8.onnx"):       # one int8 copy of the weights each
        assert 0.8 * n_weights <= _int8_count(rep.path / name) <= 1.2 * n_weights, name
    cs = rep.sampler
    assert cs.info["loop"] == recorded["chosen"] and cs.info["loop_choice"] == recorded
    assert cs.loop.path.name == ort_loop.LOOP_GRAPHS[recorded["chosen"]][0]
    assert cs.loop.warm_path.name == ort_loop.LOOP_GRAPHS[recorded["chosen"]][1]
    n_params = sum(p.numel() for p in pol.denoiser.parameters())
    assert cs.weight_bytes == n_params * (1 if recorded["chosen"] == "int8" else 4)
    assert "loop_int8.onnx" in rep.manifest["files"] and "loop_choice.json" in rep.manifest["files"]


@pytest.mark.parametrize("forced", ["fp32", "int8"])
def test_load_runs_the_recorded_loop_graph(warm_build, tmp_path, forced):
    """A choice file naming one graph: load runs that graph (its actions, its bytes), not the other."""
    import onnxruntime as ort

    pol, rep = warm_build
    entry = tmp_path / "entry"
    shutil.copytree(rep.path, entry)
    recorded = json.loads((entry / "loop_choice.json").read_text())
    (entry / "loop_choice.json").write_text(json.dumps({**recorded, "chosen": forced}))
    cs = get_backend("onnxruntime-loop").load(pol, "int8", 4, CPU, entry)
    assert cs.info["loop"] == forced and cs.loop.path == entry / ort_loop.LOOP_GRAPHS[forced][0]
    assert cs.loop.warm_path == entry / ort_loop.LOOP_GRAPHS[forced][1]
    n_params = sum(p.numel() for p in pol.denoiser.parameters())
    assert cs.weight_bytes == n_params * (1 if forced == "int8" else 4)

    noise, _ = fixed_noise(pol, 1, 4, seed=3)
    g = torch.randn((1, pol.global_cond_dim), generator=torch.Generator().manual_seed(5))

    def direct(name):
        s = ort.InferenceSession(str(entry / name), providers=["CPUExecutionProvider"])
        return torch.from_numpy(s.run(None, {"noise": noise[0].numpy(), "cond": g.numpy()})[0])

    got = cs.loop(noise[0], g)
    other = "int8" if forced == "fp32" else "fp32"
    torch.testing.assert_close(got, direct(ort_loop.LOOP_GRAPHS[forced][0]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, direct(ort_loop.LOOP_GRAPHS[other][0]), rtol=1e-5, atol=1e-6)


def test_a_missing_or_foreign_loop_choice_is_refused(warm_build, tmp_path):
    pol, rep = warm_build
    entry = tmp_path / "entry"
    shutil.copytree(rep.path, entry)
    (entry / "loop_choice.json").write_text(json.dumps({"chosen": "int4"}))
    with pytest.raises(ValueError, match="unknown loop graph 'int4'.*rebuild with --force"):
        get_backend("onnxruntime-loop").load(pol, "int8", 4, CPU, entry)
    (entry / "loop_choice.json").unlink()
    with pytest.raises(FileNotFoundError, match="loop_choice.json is missing"):
        get_backend("onnxruntime-loop").load(pol, "int8", 4, CPU, entry)
    # fp32 builds have one loop graph and no choice to make
    assert get_backend("onnxruntime-loop").load(pol, "fp32", 4, CPU, entry).info["loop"] == "fp32"


@pytest.mark.parametrize("faster", ["fp32", "int8"])
def test_the_faster_loop_graph_is_kept(warm_build, monkeypatch, faster):
    """choose_loop runs both graphs through the timer and keeps whichever it says is faster."""
    seen = {}

    def timed(calls, repeats):
        for k, call in calls.items():
            seen[k] = call()[0].shape                             # really runs each session
        return {k: (1.0 if k == faster else 2.0) for k in calls}

    monkeypatch.setattr(ort_loop, "_median_ms", timed)
    choice = ort_loop.choose_loop(warm_build[1].path, 1)
    assert choice["chosen"] == faster and choice["ms"][faster] == 1.0
    pol = warm_build[0]
    assert seen == {"fp32": (1, pol.horizon, pol.action_dim), "int8": (1, pol.horizon, pol.action_dim)}


# ---------------------------------------------------------------- the encoder: accepted by its actions
@pytest.fixture(scope="module")
def encoder_entry(tmp_path_factory):
    """preset:small's float32 encoder graph, and the float32 loop (K=2) the chooser checks actions through."""
    torch.manual_seed(0)
    pol = load_policy("preset:small")
    entry = tmp_path_factory.mktemp("encgate")
    keys = list(pol.image_keys) + list(pol.state_keys)
    ort_loop.export_encoder(pol, keys, entry / "encoder.onnx")
    # a deliberately bad candidate: the same graph with the first convolution's weights scrambled
    bad = copy.deepcopy(pol)
    conv = next(m for m in bad.obs_encoder.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(1)))
    ort_loop.export_encoder(bad, keys, entry / "bad.onnx")
    loop = make_loop(pol, FloatOut(float_unet_copy(pol, CPU, "fp32")).eval(), 2, CPU)
    return pol, entry, keys, loop


def _choose(pol, entry, keys, loop):
    return ort_loop.choose_encoder(pol, entry, keys, 1, repeats=1, loop=loop, steps=2,
                                   stochastic=bool(loop.needs_variance_noise))


def test_a_fast_candidate_whose_actions_move_too_far_is_refused(encoder_entry, tmp_path, monkeypatch):
    pol, src, keys, loop = encoder_entry
    entry = tmp_path / "e"
    entry.mkdir()
    shutil.copy(src / "encoder.onnx", entry / "encoder.onnx")
    shutil.copy(src / "bad.onnx", entry / "encoder_int8.onnx")   # in a candidate's slot
    monkeypatch.setattr(ort_loop, "bf16_native", lambda: False)
    monkeypatch.setattr(ort_loop, "_median_ms", lambda calls, repeats: {k: (1.0 if k == "onnx-int8" else 9.0)
                                                                         for k in calls})
    choice = _choose(pol, entry, keys, loop)
    json.dumps(choice)                                            # what the build writes to encoder_choice.json
    bad = choice["action_error"]["onnx-int8"]
    assert bad["rmse"] > ort_loop.ENCODER_MAX_RMSE or bad["max"] > ort_loop.ENCODER_MAX_ABS, bad
    assert choice["accepted"] == {"onnx-fp32": True, "onnx-int8": False}
    assert choice["chosen"] == "onnx-fp32"                        # the fastest, refused
    assert choice["action_error"]["onnx-fp32"]["max"] < 1e-3      # the float graph reproduces float32
    assert choice["relative_feature_error"]["onnx-int8"] > 0.02   # feature error still recorded
    assert choice["action_limits"] == {"rmse": 0.025, "max": 0.1, "share_of_gate": 0.5}


def test_a_fast_candidate_within_the_action_limits_is_kept(encoder_entry, tmp_path, monkeypatch):
    """The acceptance is by actions: a candidate that moves them by less than the limits is kept when fastest,
    and refused once the limit drops under its error."""
    pol, src, keys, loop = encoder_entry
    entry = tmp_path / "e"
    entry.mkdir()
    shutil.copy(src / "encoder.onnx", entry / "encoder.onnx")
    ort_loop._quantize(entry / "encoder.onnx", entry / "encoder_int8.onnx")  # the real dynamic int8 candidate
    monkeypatch.setattr(ort_loop, "bf16_native", lambda: False)
    monkeypatch.setattr(ort_loop, "_median_ms", lambda calls, repeats: {k: (1.0 if k == "onnx-int8" else 9.0)
                                                                         for k in calls})
    choice = _choose(pol, entry, keys, loop)
    err = choice["action_error"]["onnx-int8"]
    assert 0 < err["rmse"] <= ort_loop.ENCODER_MAX_RMSE and err["max"] <= ort_loop.ENCODER_MAX_ABS, err
    assert choice["chosen"] == "onnx-int8"
    monkeypatch.setattr(ort_loop, "ENCODER_MAX_RMSE", err["rmse"] / 2)
    tight = _choose(pol, entry, keys, loop)
    assert tight["accepted"]["onnx-int8"] is False and tight["chosen"] == "onnx-fp32"


def test_an_inpainting_loop_checks_encoders_on_the_first_chunk_form(tmp_path):
    """An inpainting graph takes prefix / n_fixed / n_overlap: the encoder check feeds the first chunk's (zero
    prefix, nothing decided) and still records every candidate's action error."""
    pol = tiny_policy()
    pol.configure_sampler("ddim", inpaint="replace")
    try:
        rep = compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path, gate=False, gate_samples=2)
    finally:
        pol.configure_sampler("ddim")
    choice = json.loads((rep.path / "encoder_choice.json").read_text())
    assert set(choice["action_error"]) == set(choice["ms"]) >= {"onnx-fp32", "onnx-int8"}
    assert choice["action_error"]["onnx-fp32"]["max"] < 1e-3 and choice["accepted"][choice["chosen"]]
    assert rep.sampler.info["loop"] == json.loads((rep.path / "loop_choice.json").read_text())["chosen"]


def test_an_int8_build_without_an_int8_loop_keeps_the_float32_one(tmp_path, monkeypatch):
    """onnxruntime 1.23 (what pip gives Python 3.10) cannot quantize the unrolled loop graph: the int8 build keeps
    the float32 loop, records why, and still chooses its encoder, instead of failing the whole build. The
    quantizer's refusal is injected here so that every onnxruntime version runs this path."""
    from edgedp.errors import UserError

    real = ort_loop._quantize

    def refuses_loops(path, out=None):
        if Path(path).name.startswith("loop"):
            raise UserError("backend onnxruntime-loop: onnxruntime X cannot run an int8 form of the loop graph")
        return real(path, out)

    monkeypatch.setattr(ort_loop, "_quantize", refuses_loops)
    pol = tiny_policy()
    rep = compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path, gate=False, gate_samples=2)
    recorded = json.loads((rep.path / "loop_choice.json").read_text())
    assert recorded["chosen"] == "fp32" and "cannot run an int8 form" in recorded["int8_unavailable"]
    assert not (rep.path / "loop_int8.onnx").exists()
    assert (rep.path / "encoder_choice.json").exists()
    cs = rep.sampler
    assert cs.info["loop"] == "fp32" and cs.weight_bytes == 4 * sum(p.numel() for p in pol.denoiser.parameters())
    g = torch.zeros((1, pol.global_cond_dim))
    x = torch.zeros((1, pol.horizon, pol.action_dim))
    assert torch.isfinite(cs(g, x)).all()


@pytest.mark.parametrize("damage", ['{"chosen": "int4"}', '{"chosen'])
def test_a_cache_hit_with_a_damaged_choice_record_is_rebuilt(tmp_path, damage):
    """An entry whose choice record was edited or truncated is stale, not a traceback: compile_policy rebuilds it
    (the path every stale entry takes) and says why."""
    pol = tiny_policy()
    first = compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path, gate=False, gate_samples=2)
    (first.path / "loop_choice.json").write_text(damage)
    again = compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path, gate=False, gate_samples=2)
    assert again.state == "stale" and "entry unusable" in again.reason and "loop_choice.json" in again.reason
    assert json.loads((again.path / "loop_choice.json").read_text())["chosen"] in ort_loop.LOOP_GRAPHS
    assert compile_policy(pol, "onnxruntime-loop", "int8", 4, "cpu", tmp_path, gate=False).state == "hit"
