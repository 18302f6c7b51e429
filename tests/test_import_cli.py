"""`edgedp import` / `edgedp info` / `edgedp.load_policy` on foreign checkpoints, end to end.

Import -> native -> load must give the same numbers as loading the source directly; user
mistakes end in one line on stderr and exit code 2, with nothing written.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgedp
from edgedp.cli import main

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
LOWDIM = FIXTURES / "diffusion_policy" / "lowdim_pusht" / "checkpoint.ckpt"
LEROBOT = FIXTURES / "lerobot" / "pusht_1cam" / "pretrained_model"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"reference fixture {p} not present (expected at <repo>/../shared/fixtures)")
    return p


def _obs_lowdim():
    e = np.load(LOWDIM.parent / "expected.npz")
    return {"obs": e["obs"][0]}, e


@pytest.mark.parametrize("src_name", ["lowdim", "lerobot"])
def test_import_then_native_load_is_identical(tmp_path, capsys, src_name):
    src = _need(LOWDIM if src_name == "lowdim" else LEROBOT)
    out = tmp_path / "native"
    assert main(["import", str(src), "--out", str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "policy.yaml"]
    direct = edgedp.load_policy(str(src))
    native = edgedp.load_policy(str(out))
    if src_name == "lowdim":
        obs, e = _obs_lowdim()
        noise = e["ddpm100_noise"][0]
    else:
        e = np.load(LEROBOT.parent / "expected.npz")
        obs = {"observation.image": e["raw.observation.image"], "observation.state": e["raw.observation.state"]}
        noise = e["noise"][0]
    direct.reseed(5)
    native.reseed(5)
    a, b = direct.predict_chunk(obs, noise=noise), native.predict_chunk(obs, noise=noise)
    np.testing.assert_array_equal(a, b)
    sa, sb = direct.state_dict(), native.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    if src_name == "lerobot":
        np.testing.assert_allclose(b, e["traj"][0], rtol=0, atol=5e-3)


def test_import_with_scheduler_and_k_override(tmp_path, capsys):
    src = _need(LOWDIM)
    out = tmp_path / "n"
    assert main(["import", str(src), "--out", str(out), "--scheduler", "ddim", "--steps", "10"]) == 0
    pol = edgedp.load_policy(str(out))
    assert pol.scheduler_spec.kind == "ddim" and pol.num_inference_steps == 10
    obs, e = _obs_lowdim()
    np.testing.assert_allclose(pol.predict_chunk(obs, noise=e["ddim10_noise"][0]), e["ddim10_action_pred"][0],
                               rtol=0, atol=5e-3)
    # overwriting needs --force; then it works
    assert main(["import", str(src), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["import", str(src), "--out", str(out), "--force"]) == 0


def test_info_on_all_three_kinds(tmp_path, capsys):
    src = _need(LOWDIM)
    lerobot = _need(LEROBOT)
    out = tmp_path / "n"
    assert main(["import", str(src), "--out", str(out)]) == 0
    capsys.readouterr()
    for path, must in [(src, ["DiffusionUnetLowdimPolicy", "ema_model", "DDPM", "LinearNormalizer", "4,559,554"]),
                       (out, ["edgedp-native", "DiffusionUnetLowdimPolicy", "4,559,554", "imported_from"]),
                       (lerobot, ["lerobot", "11,197,088", "4,889,282", "observation.image", "84x84", "DDIM",
                                  "MEAN_STD", "policy_preprocessor_step_3"])]:
        assert main(["info", str(path)]) == 0
        text = capsys.readouterr().out
        for m in must:
            assert m in text, (path, m)


@pytest.mark.parametrize("args,needle", [
    (["import", "/no/such/ckpt", "--out", "{tmp}/o"], "no such file"),
    (["import", "{tmp}/junk.ckpt", "--out", "{tmp}/o"], "junk.ckpt"),
    (["import", "{tmp}", "--out", "{tmp}/o"], "not a LeRobot"),
    (["info", "{tmp}/junk.ckpt"], "junk.ckpt"),
    (["info", "/no/such/dir"], "no such file"),
])
def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys, args, needle):
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


def test_refused_pickle_via_cli_subprocess(tmp_path):
    """The real console script: exit 2, one line naming the class, and the payload never ran."""
    import os
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    ck = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(ck, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"cfg": Evil()}, protocol=2))
    r = subprocess.run([sys.executable, "-m", "edgedp.cli", "import", str(ck), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "refusing to load" in r.stderr and ".system" in r.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o").exists()
