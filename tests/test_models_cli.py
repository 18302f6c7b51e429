"""`edgedp init-policy` and edgedp.policy_loading: loadable output, seeded init, one-line user errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedp.cli import main
from edgedp.errors import UserError
from edgedp.policy_loading import describe_checkpoint, load_policy


def test_init_policy_writes_a_loadable_checkpoint(tmp_path: Path, capsys):
    out = tmp_path / "small"
    assert main(["init-policy", "--preset", "small", "--out", str(out), "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "1,935,394" in text and "unet" in text
    policy = load_policy(out)
    same = load_policy("preset:small", seed=5)
    for k, v in same.state_dict().items():
        assert torch.equal(policy.state_dict()[k], v), k
    other = load_policy("preset:small", seed=6)
    assert not torch.equal(other.state_dict()["unet.final_conv.1.weight"], same.state_dict()["unet.final_conv.1.weight"])
    obs = {"observation.image": np.zeros((2, 96, 96, 3), np.uint8), "observation.state": np.zeros((2, 2), np.float32)}
    assert policy.predict_chunk(obs, np.zeros((16, 2), np.float32)).shape == (16, 2)
    info = describe_checkpoint(out)
    assert info["horizon"] == 16 and info["image_keys"] == ["observation.image"] and info["action_dim"] == 2


def test_init_policy_refuses_to_clobber(tmp_path: Path, capsys):
    out = tmp_path / "c"
    assert main(["init-policy", "--preset", "small", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["init-policy", "--preset", "small", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --force" in err[0]
    assert main(["init-policy", "--preset", "small", "--out", str(out), "--force", "--seed", "1"]) == 0
    assert main(["init-policy", "--preset", "bogus", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'bogus'" in err[0] and "small" in err[0]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("ref,kwargs,msg", [
    ("/no/such/dir", {}, "not found"),
    ("preset:small", {"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "bogus"}, "policy device"),
    ("preset:small", {"device": "toaster"}, "not a device"),
    ("preset:small", {"num_inference_steps": 0}, "num_inference_steps"),
])
def test_load_policy_user_errors(ref, kwargs, msg):
    with pytest.raises(UserError, match=msg) as err:
        load_policy(ref, **kwargs)
    assert "\n" not in str(err.value)


def test_unrecognised_dir_and_broken_native(tmp_path: Path):
    with pytest.raises(UserError, match="not a recognised checkpoint"):
        load_policy(tmp_path)
    (tmp_path / "policy.yaml").write_text("format: edgedp-native\nformat_version: 1\nspec: {action_dim: 2}\n")
    with pytest.raises(UserError, match="state_features") as err:
        describe_checkpoint(tmp_path)
    assert "(native)" in str(err.value)
