"""`edgedp bench --vs-lerobot`: LeRobot's own DiffusionPolicy as the reference, same weights, one run.

Fast tests: the architecture mapping (and its refusals), the alternating round-robin, one-line CLI
errors.  Slow tests start the real LeRobot 0.4.4 venv (EDGEDP_LEROBOT_PYTHON or /work/venvs/lerobot044).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgedp.cli import main
from edgedp.compile import lerobot_ref
from edgedp.compile.bench import round_robin
from edgedp.errors import UserError
from edgedp.policy_loading import load_policy

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "lerobot" / "pusht_1cam"


def test_paper_preset_maps_to_lerobot_config_field_by_field():
    spec = load_policy("preset:pusht_paper").spec
    cfg = lerobot_ref.lerobot_config(spec, 7)
    assert cfg["down_dims"] == [512, 1024, 2048]
    assert cfg["diffusion_step_embed_dim"] == 128 and cfg["kernel_size"] == 5 and cfg["n_groups"] == 8
    assert cfg["spatial_softmax_num_keypoints"] == 32 and cfg["crop_shape"] == [84, 84]
    assert cfg["use_film_scale_modulation"] is True and cfg["use_group_norm"] is True
    assert cfg["noise_scheduler_type"] == "DDIM" and cfg["num_inference_steps"] == 7
    assert cfg["beta_schedule"] == "squaredcos_cap_v2" and cfg["n_obs_steps"] == 2 and cfg["horizon"] == 16


@pytest.mark.parametrize("preset,needle", [
    ("small", "encoder width 16"),
    ("transformer_small", "denoiser transformer"),
])
def test_architectures_lerobot_cannot_build_are_refused_by_name(preset, needle):
    spec = load_policy(f"preset:{preset}").spec
    with pytest.raises(UserError, match=needle):
        lerobot_ref.lerobot_config(spec, 10)


def test_round_robin_reverses_order_and_uses_self_timed_figures():
    calls: list[str] = []

    def rec(name, value=None):
        def fn():
            calls.append(name)
            return value
        return fn

    times = round_robin({"a": rec("a"), "b": rec("b", 123.0), "c": rec("c")}, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("cba") + list("abc")
    assert times["b"] == [123.0, 123.0, 123.0]          # the child's own figure, not the pipe's wall time
    assert len(times["a"]) == 3 and all(t >= 0 for t in times["a"])


def test_missing_interpreter_is_one_line_exit_2(capsys, tmp_path):
    code = main(["bench", "--preset", "pusht_paper", "--steps", "2", "--json", str(tmp_path / "r.json"),
                 "--vs-lerobot", "--lerobot-python", str(tmp_path / "no" / "python")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such interpreter" in err[0], err
    assert not (tmp_path / "r.json").exists()


def test_small_preset_refused_before_anything_starts(capsys, tmp_path):
    if not Path(lerobot_ref.default_python()).is_file():
        pytest.skip("no LeRobot venv here")
    code = main(["bench", "--preset", "small", "--steps", "2", "--json", str(tmp_path / "r.json"), "--vs-lerobot"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no LeRobot equivalent" in err[0], err


def test_lerobot_python_without_vs_lerobot_is_refused(capsys, tmp_path):
    assert main(["bench", "--preset", "small", "--steps", "2", "--json", str(tmp_path / "r.json"),
                 "--lerobot-python", "/usr/bin/python3"]) == 2
    assert "--lerobot-python needs --vs-lerobot" in capsys.readouterr().err


def _venv_or_skip() -> str:
    python = lerobot_ref.default_python()
    if not Path(python).is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"LeRobot venv {python} missing (CI=true)")
        pytest.skip(f"LeRobot venv {python} not present")
    return python


@pytest.mark.slow
def test_vs_lerobot_on_the_shared_fixture_reports_lerobot_and_ratios(capsys, tmp_path):
    _venv_or_skip()
    if not (FIXTURE / "pretrained_model" / "model.safetensors").is_file():
        pytest.skip("pusht_1cam fixture not present")
    out = tmp_path / "r.json"
    assert main(["bench", str(FIXTURE), "--steps", "3", "--json", str(out), "--backends", "eager:fp32",
                 "--repeats", "1", "--loop-repeats", "2", "--warmup", "0", "--vs-lerobot",
                 "--cache", str(tmp_path / "cache")]) == 0
    rep = json.loads(out.read_text())
    lr = rep["lerobot"]
    assert lr["lerobot"] == "0.4.4" and lr["threads"] == 1 and lr["steps"] == 3
    assert lr["parameters"] == rep["parameters"]["total"]          # same network on both sides
    assert len(rep["lerobot_chunk_all_ms"]) == 2 and rep["lerobot_chunk_ms"] > 0
    r = rep["results"]["eager/fp32"]
    assert r["speedup_vs_lerobot"] == pytest.approx(rep["lerobot_chunk_ms"] / r["chunk_ms"])
    assert "LeRobot 0.4.4" in capsys.readouterr().out


@pytest.mark.slow
def test_lerobot_writes_a_dir_edgedp_imports_with_identical_tensors(tmp_path):
    python = _venv_or_skip()
    from safetensors.torch import load_file

    spec = load_policy("preset:pusht_paper").spec
    spec.unet.down_dims = [32, 64, 128]          # same code path, a small U-Net to keep the test short
    d = lerobot_ref.make_reference_dir(spec, 4, python, tmp_path)
    assert lerobot_ref.make_reference_dir(spec, 4, python, tmp_path) == d      # cached by content
    pol = load_policy(str(d))
    sd = load_file(str(d / "model.safetensors"))
    ours = {n: p for n, p in pol.denoiser.named_parameters()}
    theirs = {k: v for k, v in sd.items() if k.startswith("diffusion.unet.")}
    assert sum(v.numel() for v in theirs.values()) == sum(p.numel() for p in ours.values())
    # every LeRobot U-Net tensor appears, bit for bit, among ours (names differ, values must not)
    pool = {(tuple(p.shape), float(p.double().sum())) for p in ours.values()}
    assert all((tuple(v.shape), float(v.double().sum())) in pool for v in theirs.values())
