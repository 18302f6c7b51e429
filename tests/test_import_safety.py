"""The restricted unpickler refuses code-running globals by name and reads plain torch zips exactly."""
from __future__ import annotations

import builtins
import io
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
