"""`edgedp compile` / `edgedp bench` from the command line: one-line errors with exit 2, and real runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgedp.cli import main
from edgedp.compile.roofline import machine_roofline, roofline_ms
from tests.test_compile_backends import _one_thread  # noqa: F401 (autouse fixture)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: tensorrt may be runnable here")
def test_tensorrt_without_gpu_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "edgedp.cli", "compile", "preset:small", "--backend", "tensorrt",
                           "--precision", "fp16", "--steps", "10"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "tensorrt" in lines[0] and "CUDA" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--backend", "cpu-int8", "--precision", "fp16"], "supports precision int8"),
    (["--backend", "eager", "--device", "tpu"], "unknown device 'tpu'"),
    (["--backend", "cpu-int8", "--precision", "int8", "--device", "cuda"], "cpu-int8"),
    (["--backend", "eager", "--steps", "0"], "--steps must be at least 1"),
    (["--backend", "eager", "--gate-samples", "0"], "--gate-samples"),
    (["--backend", "eager", "--sampler", "euler"], "unknown sampler 'euler'"),
    (["--backend", "eager", "--timesteps", "2,16,60"], "strictly descending"),
    (["--backend", "eager", "--timesteps", "90,60,2", "--steps", "4"], "3 timesteps but --steps 4"),
    (["--backend", "eager", "--timesteps", "ninety"], "not a comma-separated list"),
    (["--backend", "eager", "--sampler", "ddim", "--timesteps", "logsnr"], "multistep samplers"),
    (["--backend", "eager", "--sampler", "dpmsolver++", "--timesteps", "900,60,16,2"], "--timesteps"),
])
def test_bad_requests_fail_fast_with_one_line(capsys, argv, needle):
    assert main(["compile", "preset:small", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_compile_builds_the_loop_a_run_config_with_sampler_and_timesteps_looks_up(capsys, tmp_path):
    """`edgedp compile --sampler/--timesteps` prebuilds exactly what `policy.sampler: dpmsolver++` with
    `policy.timesteps: logsnr` asks the cache for at run time (before these flags, compile built the checkpoint's
    DDIM loop and the run rebuilt)."""
    from edgedp.compile.api import compile_policy
    from edgedp.policy_loading import load_policy

    args = ["compile", "preset:small", "--backend", "onnxruntime-loop", "--sampler", "dpmsolver++", "--steps", "4",
            "--timesteps", "logsnr", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "built: onnxruntime-loop/fp32 K=4" in capsys.readouterr().out
    policy = load_policy("preset:small", steps=4)
    policy.configure_sampler("dpmsolver++", timesteps="logsnr")  # what edgedp.app.configure_sampler does
    assert compile_policy(policy, "onnxruntime-loop", "fp32", 4, "cpu", tmp_path).state == "hit"


def test_bad_checkpoint_path_is_one_line(capsys, tmp_path):
    assert main(["compile", str(tmp_path / "missing"), "--backend", "eager", "--out", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compile_small_int8_prints_gate_and_hits_cache(capsys, tmp_path):
    args = ["compile", "preset:small", "--backend", "cpu-int8", "--precision", "int8", "--steps", "2",
            "--out", str(tmp_path), "--gate-samples", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "built: cpu-int8/int8 K=2" in out and "RMSE" in out and "normalized units" in out
    assert main(args) == 0
    assert "cache hit" in capsys.readouterr().out


def test_compile_refuses_over_threshold_then_override(capsys, tmp_path):
    args = ["compile", "preset:small", "--backend", "cpu-int8", "--precision", "int8", "--steps", "2",
            "--out", str(tmp_path), "--gate-samples", "1", "--max-rmse", "1e-9"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing" in err[0] and "--allow-inaccurate" in err[0]
    assert main(args + ["--allow-inaccurate"]) == 0
    assert "accepted because of --allow-inaccurate" in capsys.readouterr().out


def test_bench_small_writes_json_and_png(capsys, tmp_path):
    out = tmp_path / "b.json"
    code = main(["bench", "--preset", "small", "--steps", "2", "--json", str(out), "--repeats", "2",
                 "--warmup", "1", "--rmse-samples", "1", "--backends", "eager:fp32,cpu-int8:int8",
                 "--cache", str(tmp_path / "cache")])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["reference_chunk_ms"] > 0 and rep["steps"] == 2
    for label in ("eager/fp32", "cpu-int8/int8"):
        r = rep["results"][label]
        for key in ("chunk_ms", "step_ms", "encoder_ms", "scheduler_ms", "roofline_fraction", "action_rmse_vs_fp32"):
            assert r[key] >= 0, (label, key)
    assert rep["results"]["eager/fp32"]["action_rmse_vs_fp32"] == 0.0
    assert rep["results"]["cpu-int8/int8"]["weight_bytes"] < 0.35 * rep["results"]["eager/fp32"]["weight_bytes"]
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cpu-int8/int8" in capsys.readouterr().out


def test_bench_argument_errors(capsys, tmp_path):
    assert main(["bench", "--steps", "2", "--json", str(tmp_path / "x.json")]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["bench", "--preset", "small", "--steps", "2", "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "--preset", "small", "--steps", "2", "--json", str(tmp_path / "x.json"),
                 "--backends", "eager"]) == 2
    assert "backend:precision" in capsys.readouterr().err


def test_roofline_measures_and_caches(tmp_path):
    a = machine_roofline("cpu", cache_dir=tmp_path, buffer_mb=64)
    assert a["bandwidth_gbs"] > 0.1 and a["peak_gflops"]["fp32"] > 0.1
    b = machine_roofline("cpu", cache_dir=tmp_path, buffer_mb=64)
    assert b["measured_unix"] == a["measured_unix"]
    # weight-bound: 1 GB at 10 GB/s is 100 ms whatever the FLOPs; compute-bound the other way round
    assert roofline_ms(10**9, 10**6, 10.0, 100.0) == pytest.approx(100.0)
    assert roofline_ms(10**3, 10**12, 10.0, 100.0) == pytest.approx(10_000.0)
