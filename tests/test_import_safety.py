"""The restricted unpickler refuses code-running globals by name and reads plain torch zips exactly."""
from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from models.checkpoint_import import CheckpointError, UnsafeCheckpointError, load_torch_zip
from models.checkpoint_import.safe_unpickle import restricted_loads


class _CallsOnLoad:
    """Pickles as `func(*args)`, the classic payload of a malicious checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _torch_zip_with_pickle(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("func,args,name", [
    (os.system, ("touch {marker}",), f"{os.system.__module__}.system"),
    (builtins.eval, ("open({marker!r}, 'w')",), "builtins.eval"),
    (builtins.exec, ("open({marker!r}, 'w')",), "builtins.exec"),
    (subprocess.call, (["touch", "{marker}"],), "subprocess.call"),
])
def test_refuses_code_globals_naming_class_and_file(tmp_path, func, args, name):
    marker = tmp_path / "pwned"
    args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else [x.format(marker=str(marker)) for x in a]
                 for a in args)
    payload = pickle.dumps({"state_dict": {"w": 1}, "x": _CallsOnLoad(func, *args)}, protocol=2)
    ckpt = tmp_path / "evil.ckpt"
    _torch_zip_with_pickle(ckpt, payload)
    with pytest.raises(UnsafeCheckpointError) as exc:
        load_torch_zip(ckpt)
    msg = str(exc.value)
    assert f"refusing to load {name} from evil.ckpt" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_refuses_nested_global_in_config_pickle():
    payload = pickle.dumps([1, 2, {"a": _CallsOnLoad(os.getcwd)}], protocol=4)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*getcwd from blob"):
        restricted_loads(payload, "blob")


def test_plain_torch_save_round_trip_keeps_dtypes_views_and_aliasing(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {
        "w": base,
        "w_alias": base,                      # same tensor under two names
        "col": base[:, 2],                    # strided view into the same storage
        "t": base.t(),                        # non-contiguous
        "h": torch.randn(3, dtype=torch.float16),
        "b": torch.randn(2, 2, dtype=torch.bfloat16),
        "i": torch.tensor([1, -2, 3], dtype=torch.int64),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0),
        "scalar": torch.tensor(3.5),
        "param": torch.nn.Parameter(torch.ones(2)),
        "meta": {"name": "x", "n": 3, "f": 0.5, "l": [1, (2, 3)], "none": None, "bytes": b"\x00\xff"},
    }
    path = tmp_path / "plain.pt"
    torch.save(sd, path)
    got = load_torch_zip(path)
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            assert torch.equal(got[k], v.detach()), k
    assert got["meta"] == sd["meta"]
    assert got["w"].data_ptr() == got["w_alias"].data_ptr()
    assert got["col"].untyped_storage().data_ptr() == got["w"].untyped_storage().data_ptr()


def test_legacy_non_zip_format_is_named(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="unsupported legacy"):
        load_torch_zip(path)


def test_wrong_file_types_give_one_line(tmp_path):
    cases = {
        "empty.ckpt": b"",
        "text.ckpt": b"model: resnet\n",
        "json.ckpt": b'{"type": "diffusion"}',
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as exc:
            load_torch_zip(p)
        assert name in str(exc.value) and "\n" not in str(exc.value)
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="data.pkl"):
        load_torch_zip(z)


def _raw_pickle_zip(path: Path, body: bytes) -> None:
    """A torch-zip whose data.pkl is hand-written opcodes (protocol 2 header + body + STOP)."""
    _torch_zip_with_pickle(path, b"\x80\x02" + body + b".")


def test_deep_nesting_and_shared_reference_blowup_fail_fast(tmp_path):
    deep = tmp_path / "deep.ckpt"
    _raw_pickle_zip(deep, b"]" * 100_000)  # 1e5 lists left on the stack: the top one is the result
    assert load_torch_zip(deep) == []
    p = tmp_path / "nested.ckpt"
    _raw_pickle_zip(p, b"]" * 5000 + b"a" * 4999)  # APPEND each list into the one below: depth 5000
    with pytest.raises(CheckpointError, match="nests"):
        load_torch_zip(p)
    # 2**40 paths through shared references: walked once per object, and refused, because any repr,
    # comparison or error message quoting it later would walk every path
    x: list = [0]
    for _ in range(40):
        x = [x, x]
    p2 = tmp_path / "laughs.ckpt"
    _torch_zip_with_pickle(p2, pickle.dumps(x, protocol=2))
    with pytest.raises(CheckpointError, match="expands to more than 1,000,000 items"):
        load_torch_zip(p2)
    # sharing itself is fine (model and EMA share tensors): 2**10 paths load, sharing kept
    y: list = [0]
    for _ in range(10):
        y = [y, y]
    p3 = tmp_path / "shared.ckpt"
    _torch_zip_with_pickle(p3, pickle.dumps(y, protocol=2))
    got = load_torch_zip(p3)
    assert got[0] is got[1]


def test_build_cannot_tamper_with_allowed_globals(tmp_path):
    # GLOBAL collections OrderedDict, then BUILD with slot state {'_fn': print}
    body = b"ccollections\nOrderedDict\n" + b"N}X\x03\x00\x00\x00_fnK\x01s\x86b"
    p = tmp_path / "tamper.ckpt"
    _raw_pickle_zip(p, body)
    with pytest.raises(CheckpointError):
        load_torch_zip(p)
    # the allow-list still works afterwards in this process
    ok = tmp_path / "ok.pt"
    torch.save({"a": torch.ones(2)}, ok)
    assert torch.equal(load_torch_zip(ok)["a"], torch.ones(2))


def test_damaged_lerobot_files_give_one_line(tmp_path):
    import json
    from safetensors.torch import save_file
    from models.checkpoint_import.lerobot import read_lerobot

    d = tmp_path / "pretrained_model"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    save_file({"diffusion.unet.x": torch.ones(1)}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="config.json: unreadable JSON"):
        read_lerobot(d)
    (d / "config.json").write_text(json.dumps({"type": "diffusion", "input_features": {
        "observation.state": {"type": "STATE", "shape": [2]}}, "output_features": {
        "action": {"type": "ACTION", "shape": [2]}}, "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8}))
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged safetensors"):
        read_lerobot(d)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="damaged safetensors"):
        read_lerobot(d)
