"""onnxruntime-loop int8: the static (calibrated QDQ) int8 encoder candidate.

Checked: the graph really holds int8 convolutions (Q/DQ around every Conv, int8 weights, and onnxruntime fuses
them into QLinearConv), its features stay within the chooser's 2 % on held-out observations yet differ from
float32 (it really runs quantized), the calibration observations the build receives set its activation ranges,
and the chooser lists it with its feature and action errors and its time, and refuses it when its actions miss
the limit.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from edgedp.compile.quantize import ObservationSets, synthetic_observations
from edgedp.policy_loading import load_policy
from tests.test_compile_backends import _one_thread  # noqa: F401 (autouse fixture)

pytest.importorskip("onnxruntime", reason="onnxruntime (onnx extra) is not installed")
onnx = pytest.importorskip("onnx", reason="onnx (onnx extra) is not installed")

from edgedp.compile import ort_loop  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """preset:small's encoder exported to ONNX and quantized statically on synthetic calibration scenes."""
    torch.manual_seed(0)
    pol = load_policy("preset:small")
    entry = tmp_path_factory.mktemp("static")
    keys = list(pol.image_keys) + list(pol.state_keys)
    ort_loop.export_encoder(pol, keys, entry / "encoder.onnx")
    cal, source = ort_loop._encoder_calibration(pol, None)
    assert source == "synthetic" and len(cal) == 8
    ort_loop.quantize_encoder_static(entry / "encoder.onnx", entry / "encoder_int8_static.onnx", pol, keys, cal)
    return pol, entry, keys


def _rel_errors(pol, enc, observations):
    out = []
    for o in observations:
        ref = pol.encode(o).float()
        out.append(float((enc(o).float() - ref).abs().max() / ref.abs().max()))
    return out


def test_every_convolution_is_int8_and_onnxruntime_fuses_them(built, tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto

    pol, entry, _ = built
    model = onnx.load(str(entry / "encoder_int8_static.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    float_convs = sum(isinstance(m, torch.nn.Conv2d) for m in pol.obs_encoder.modules())
    assert len(convs) == float_convs
    for n in convs:  # activation and weight both come through DequantizeLinear (QDQ), the output is re-quantized
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2]), n.name
        users = [m.op_type for m in model.graph.node if n.output[0] in m.input]
        assert users == ["QuantizeLinear"], (n.name, users)
    int8_weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert sum(onnx.numpy_helper.to_array(t).size for t in int8_weights) >= 0.95 * sum(
        m.weight.numel() for m in pol.obs_encoder.modules() if isinstance(m, torch.nn.Conv2d))
    # what onnxruntime runs: the Q/DQ pairs fused into integer convolutions (no float Conv left)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(entry / "encoder_int8_static.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QLinearConv"] == float_convs and ops["Conv"] == 0, ops
    assert ops["Softmax"] == 1 and ops["InstanceNormalization"] > 0  # spatial softmax and GroupNorm stay float


def test_features_stay_within_the_gate_and_are_really_quantized(built):
    pol, entry, keys = built
    enc = ort_loop.make_encoder("onnx-int8-static", pol, entry, keys, 1)
    held = synthetic_observations(pol, 4, seed=17)  # what the chooser checks without a build's held-out set
    errors = _rel_errors(pol, enc, held)
    assert max(errors) <= 0.02, errors  # the chooser's tolerance (docs/compile.md)
    assert min(errors) > 1e-4, errors  # not the float graph under another name


def test_calibration_observations_set_the_activation_ranges(built, tmp_path):
    """The build's own calibration observations (ObservationSets.calib_observations) are what it calibrates on:
    dark scenes give other activation scales than the synthetic table scenes."""
    import numpy as np

    pol, entry, keys = built
    dark = synthetic_observations(pol, 4, seed=3)
    for o in dark:
        for k in pol.image_keys:
            o[k] = (o[k] // 8).astype(np.uint8)
    sets = ObservationSets(torch.zeros(1), torch.zeros(1), "recorded:dark.npz", {}, dark, [])
    cal, source = ort_loop._encoder_calibration(pol, sets)
    assert cal is not None and len(cal) == 4 and source == "recorded:dark.npz"
    ort_loop.quantize_encoder_static(entry / "encoder.onnx", tmp_path / "dark.onnx", pol, keys, cal)

    def first_activation_scale(path):
        model = onnx.load(str(path))
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
        init = {t.name: t for t in model.graph.initializer}
        return float(onnx.numpy_helper.to_array(init[q.input[1]]))

    assert first_activation_scale(tmp_path / "dark.onnx") < 0.5 * first_activation_scale(
        entry / "encoder_int8_static.onnx")


def test_the_chooser_lists_it_and_refuses_it_past_the_action_limit(built, monkeypatch):
    """Checked by actions through the float32 loop: accepted within the limits even when its features are off by
    more than they would be from float rounding, refused (however fast) once the limit is under its error."""
    from edgedp.compile.base import FloatOut, float_unet_copy, make_loop

    pol, entry, keys = built
    cpu = torch.device("cpu")
    loop = make_loop(pol, FloatOut(float_unet_copy(pol, cpu, "fp32")).eval(), 2, cpu)

    def choose():
        return ort_loop.choose_encoder(pol, entry, keys, 1, repeats=1, loop=loop, steps=2,
                                       stochastic=bool(loop.needs_variance_noise))

    # the static candidate timed fastest (injected: no wall-clock in tests), so only its error decides
    monkeypatch.setattr(ort_loop, "_median_ms", lambda calls, repeats: {k: (1.0 if k == "onnx-int8-static" else 9.0)
                                                                         for k in calls})
    choice = choose()
    json.dumps(choice)  # what the build writes to encoder_choice.json
    assert "onnx-int8-static" in choice["ms"] and choice["checked_observations"] == 4
    act = choice["action_error"]["onnx-int8-static"]
    assert 0 < act["rmse"] <= ort_loop.ENCODER_MAX_RMSE and act["max"] <= ort_loop.ENCODER_MAX_ABS, act
    assert 1e-4 < choice["relative_feature_error"]["onnx-int8-static"]  # still recorded
    assert choice["accepted"]["onnx-int8-static"] and choice["chosen"] == "onnx-int8-static"
    # a limit it misses: never chosen, however fast
    monkeypatch.setattr(ort_loop, "ENCODER_MAX_ABS", act["max"] / 2)
    tight = choose()
    assert not tight["accepted"]["onnx-int8-static"] and tight["chosen"] != "onnx-int8-static"
    assert tight["action_error"][tight["chosen"]]["max"] <= act["max"] / 2


def test_recorded_calibration_is_checked_on_its_own_held_out_observations(built):
    """A user's recordings are the images the robot sees: the chooser checks those alone; stand-ins get more."""
    pol = built[0]
    held = synthetic_observations(pol, 3, seed=40)
    recorded = ObservationSets(torch.zeros(1), torch.zeros(1), "recorded:x.npz", {"kind": "npz"}, [], held)
    checks, what = ort_loop._feature_checks(pol, recorded)
    assert checks == held and what == "3 held-out recorded:x.npz"
    stand_in = ObservationSets(torch.zeros(1), torch.zeros(1), "simulated-scene", {"kind": "sim"}, [], held)
    checks, what = ort_loop._feature_checks(pol, stand_in)
    assert len(checks) == 7 and checks[:3] == held and what == "3 held-out simulated-scene + 4 synthetic"


def test_build_records_the_static_candidate_and_its_calibration(tmp_path):
    """Through compile_policy: the entry holds the static graph, encoder_choice.json names it with the calibration
    source the build received, and the manifest's file list (what a cache lookup checks) includes it."""
    from edgedp.compile.api import compile_policy

    torch.manual_seed(0)
    pol = load_policy("preset:small")
    rep = compile_policy(pol, "onnxruntime-loop", "int8", 2, "cpu", tmp_path, gate=False, gate_samples=2)
    choice = json.loads((rep.path / "encoder_choice.json").read_text())
    assert "onnx-int8-static" in choice["relative_feature_error"] and "onnx-int8-static" in choice["action_error"]
    assert choice["accepted"][choice["chosen"]]
    assert json.loads((rep.path / "loop_choice.json").read_text())["chosen"] == rep.sampler.info["loop"]
    assert choice["static_calibration"] == {"source": rep.calibration["source"], "n": 2}
    # the build's held-out observations; stand-in sources (synthetic, sim) are checked on 4 more synthetic scenes
    assert choice["checked_observations"] == 2 + 4, choice["checked_on"]
    assert choice["checked_on"] == f"2 held-out {rep.calibration['source']} + 4 synthetic"
    assert "encoder_int8_static.onnx" in rep.manifest["files"]
    assert rep.sampler.info["encoder"] == choice["chosen"]
