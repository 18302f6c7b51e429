"""Hostile checkpoints, each a few hundred bytes, built here: every one is refused with one line
naming the problem and exit 2 from `edgedp info`, `import`, `check` and `run`, in a subprocess
with a capped address space (RLIMIT_AS, tests/hostile_cli.py) and a generous timeout, so a hang or a gigabyte
allocation fails the test rather than the machine. No timing assertions.

A valid tiny workspace made the same way loads (the control), so the refusals are not vacuous.
"""
from __future__ import annotations

import copy
import io
import json
import math
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from models.checkpoint_import import CheckpointError, load_torch_zip
from models.checkpoint_import.original_ckpt import read_workspace_checkpoint
from models.unet1d import ConditionalUnet1D
from tests.test_config import GOOD

from tests.hostile_cli import cli, cli_many


def _cli_many(calls: list[list[str]]) -> list[tuple[int, str]]:
    return [(r.returncode, r.stderr) for r in cli_many(calls)]


# ---- a tiny valid low-dim workspace (plain dicts stand in for OmegaConf, which to_plain yields) -------
def _cfg() -> dict:
    return {
        "_target_": "diffusion_policy.workspace.train_diffusion_unet_lowdim_workspace.TrainDiffusionUnetLowdimWorkspace",
        "training": {"use_ema": False},
        "policy": {"_target_": "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy",
                   "model": {"_target_": "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D",
                             "input_dim": 2, "global_cond_dim": 6, "diffusion_step_embed_dim": 8,
                             "down_dims": [8, 16], "kernel_size": 3, "n_groups": 4, "cond_predict_scale": True},
                   "horizon": 4, "n_obs_steps": 2, "n_action_steps": 2, "obs_dim": 3, "action_dim": 2,
                   "num_inference_steps": 4, "obs_as_global_cond": True, "oa_step_convention": True,
                   "noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                                       "num_train_timesteps": 10, "beta_schedule": "squaredcos_cap_v2",
                                       "variance_type": "fixed_small", "clip_sample": True,
                                       "prediction_type": "epsilon"}},
    }


def _state_dict() -> dict:
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, 6, diffusion_step_embed_dim=8, down_dims=[8, 16], kernel_size=3, n_groups=4)
    sd = {"model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"normalizer.params_dict.obs.scale": torch.full((3,), 0.01),
               "normalizer.params_dict.obs.offset": torch.zeros(3),
               "normalizer.params_dict.action.scale": torch.full((2,), 0.02),
               "normalizer.params_dict.action.offset": torch.full((2,), -1.0)})
    return sd


def _workspace(cfg: dict | None = None, sd: dict | None = None) -> bytes:
    buf = io.BytesIO()
    torch.save({"cfg": _cfg() if cfg is None else cfg, "state_dicts": {"model": _state_dict() if sd is None else sd},
                "pickles": {}}, buf, pickle_protocol=2)
    return buf.getvalue()


def _zip_pickle(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
    return buf.getvalue()


def _laughs(levels: int = 40) -> list:
    x: list = [0]
    for _ in range(levels):
        x = [x, x]
    return x


# ---- the hostile files ---------------------------------------------------------------------------
def _raw(body: bytes) -> bytes:
    """A protocol-2 pickle from hand-written opcodes."""
    return _zip_pickle(b"\x80\x02" + body + b".")


_BINT = struct.Struct("<i")


def _hostile_ckpts() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, text the one-line refusal must contain)."""
    cfg_laughs = _cfg()
    cfg_laughs["policy"]["_target_"] = _laughs()  # the error message naming the class expanded it
    stride0 = _state_dict()
    stride0["model.final_conv.1.weight"] = torch.zeros(1).expand(600_000_000)  # 2.4 GB of 'parameters'
    base = torch.zeros(4096)
    overlap = _state_dict()
    overlap.update({f"model.extra{i}": base[i:i + 4000] for i in range(32)})  # 32 views, 1 storage
    nan_h, str_h, big_h, steps = _cfg(), _cfg(), _cfg(), _cfg()
    nan_h["policy"]["horizon"] = math.nan
    str_h["policy"]["n_obs_steps"] = "two"
    big_h["policy"]["model"]["down_dims"] = [10**5000]
    steps["policy"]["noise_scheduler"]["num_train_timesteps"] = 10**9
    gbytes = 1_900_000_000
    files = {
        "laughs_cfg": (_zip_pickle(pickle.dumps({"cfg": cfg_laughs, "state_dicts": {"model": {}}}, protocol=2)), "expands to more than 1,000,000 items"),
        "stride0": (_workspace(sd=stride0), "overlapping strides"),
        "overlapping_views": (_workspace(sd=overlap), "views overlap"),
        # REDUCE on allowed builtins: bytes(1.9e9), through the builtins name and through dill's _load_type
        "bytes_call": (_raw(b"c__builtin__\nbytes\n(J" + _BINT.pack(gbytes) + b"tR"), "refusing builtins.bytes(int)"),
        "dill_bytes_call": (_raw(b"cdill._dill\n_load_type\n(X\x05\x00\x00\x00bytestR(J" + _BINT.pack(gbytes) + b"tR"),
                            "refusing builtins.bytes(int)"),
        "str_of_laughs": (_zip_pickle(b"\x80\x02c__builtin__\nstr\n" + pickle.dumps((_laughs(),), protocol=2)[2:-1]
                                      + b"R."), "refusing builtins.str(list)"),
        # a tuple built from the same tuple twice, 60 levels deep, as a dict key: hashing visits 2**60 paths
        "tuple_hash": (_raw(b"}K\x00q\x000" + b"h\x00h\x00\x86q\x000" * 60 + b"h\x00K\x01s"),
                       "a tuple expands to more than"),
        "nan_horizon": (_workspace(nan_h), "cfg.policy.horizon: got nan (an integer from 1 to 1024)"),
        "str_n_obs_steps": (_workspace(str_h), "cfg.policy.n_obs_steps: got 'two' (an integer from 1 to 1024)"),
        "huge_down_dims": (_workspace(big_h), "cfg.policy.model.down_dims: got [<int of 16610 bits>]"),
        "billion_timesteps": (_workspace(steps), "num_train_timesteps: got 1000000000 (an integer from 1 to 100000)"),
    }
    return files


def test_hostile_files_are_tiny_and_the_control_loads(tmp_path):
    files = _hostile_ckpts()
    assert len(files["laughs_cfg"][0]) < 2048 and len(files["bytes_call"][0]) < 400  # bytes, not gigabytes
    assert len(files["stride0"][0]) < 200_000
    good = tmp_path / "good.ckpt"
    good.write_bytes(_workspace())
    imp = read_workspace_checkpoint(good)
    assert imp.horizon == 4 and imp.unet_kwargs["down_dims"] == [8, 16]


@pytest.mark.parametrize("name", list(_hostile_ckpts()))
def test_hostile_checkpoint_is_refused_in_process(tmp_path, name):
    data, expected = _hostile_ckpts()[name]
    p = tmp_path / f"{name}.ckpt"
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        read_workspace_checkpoint(p)
    msg = str(info.value)
    assert "\n" not in msg and p.name in msg and expected in msg, msg
    assert len(msg) < 400, msg


def test_allowed_types_still_work_in_the_forms_pickle_writes(tmp_path):
    """sets, frozensets, empty bytes, complex numbers and type references are what protocol 2 writes."""
    value = {"s": {1, 2}, "f": frozenset({"a"}), "e": b"", "b": b"\x00\xff", "c": complex(1, 2), "t": dict,
             "shared": [[1, 2]] * 3}
    p = tmp_path / "plain.ckpt"
    p.write_bytes(_zip_pickle(pickle.dumps(value, protocol=2)))
    got = load_torch_zip(p)
    assert got["s"] == {1, 2} and got["f"] == frozenset({"a"}) and got["e"] == b"" and got["b"] == b"\x00\xff"
    assert got["c"] == complex(1, 2) and got["t"] is dict and got["shared"] == [[1, 2]] * 3


def test_every_command_refuses_each_hostile_checkpoint_with_one_line(tmp_path):
    files = _hostile_ckpts()
    calls, expect = [], []
    for name, (data, text) in files.items():
        p = tmp_path / f"{name}.ckpt"
        p.write_bytes(data)
        cfg = copy.deepcopy(GOOD)
        cfg["policy"]["checkpoint"] = str(p)
        run_yaml = tmp_path / f"{name}.yaml"
        run_yaml.write_text(yaml.safe_dump(cfg))
        for argv in (["info", str(p)], ["import", str(p), "--out", str(tmp_path / f"{name}_native")],
                     ["check", str(run_yaml)], ["run", str(run_yaml), "--duration", "1"]):
            calls.append(argv)
            expect.append((name, text))
    good = tmp_path / "good.ckpt"
    good.write_bytes(_workspace())
    calls.append(["info", str(good)])
    results = _cli_many(calls)
    assert results[-1][0] == 0, results[-1]  # the control
    for argv, (name, text), (code, err) in zip(calls, expect, results):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (name, argv[0], code, err[-1500:])
        assert lines[0].startswith(f"edgedp {argv[0]}: ") and text in lines[0] and name in lines[0], (name, lines[0])
        if argv[0] == "import":
            assert not (tmp_path / f"{name}_native").exists()  # nothing half-written
    # and once as a real process, for the exit status itself
    res = cli("info", str(tmp_path / "laughs_cfg.ckpt"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-1500:]


# ---- LeRobot config.json / processor files -------------------------------------------------------
@pytest.fixture(scope="module")
def lerobot_dir(tmp_path_factory) -> Path:
    """A valid tiny (state-only) LeRobot pretrained_model directory with processor files."""
    from tests.test_import_configs import _lerobot_spec, _lerobot_stats, _random_policy, _set_stats, write_lerobot

    spec = _lerobot_spec(image_features={}, state_features={"observation.state": [3]}, feature_order=[])
    pol = _random_policy(spec)
    _set_stats(pol, _lerobot_stats(spec))
    return write_lerobot(pol, tmp_path_factory.mktemp("lerobot") / "pretrained_model", cfg_extra={})


_DEEP = "[" * 100_000 + "]" * 100_000


def _lerobot_cases() -> dict[str, tuple[str, object, str]]:
    """name -> (file to replace, function of its JSON text -> hostile text, text the refusal must contain)."""
    def set_(**kw):
        return lambda text: json.dumps({**json.loads(text), **kw})

    return {
        "deep": ("config.json", lambda t: t.rstrip()[:-1] + ', "x": ' + _DEEP + "}", "nests more than"),
        "digits": ("config.json", lambda t: t.replace('"horizon": 8', '"horizon": ' + "9" * 5000),
                   "integer with 5000 digits"),
        "nan": ("config.json", lambda t: t.replace('"horizon": 8', '"horizon": NaN'), "NaN is not a finite"),
        "string_horizon": ("config.json", set_(horizon="eight"), "horizon: got 'eight' (an integer from 1 to 1024)"),
        "float_n_obs": ("config.json", set_(n_obs_steps=2.5), "n_obs_steps: got 2.5 (an integer from 1 to 1024)"),
        "negative_range": ("config.json", set_(beta_start=None, clip_sample_range=-1.0),
                     "clip_sample_range: got -1.0 (a finite number from 0 to 1e+06)"),
        "bool_shape": ("config.json", set_(output_features={"action": {"type": "ACTION", "shape": [True]}}),
                       "bad shape"),
        "duplicate": ("config.json", lambda t: t.rstrip()[:-1] + ', "horizon": 16}', "duplicate key 'horizon'"),
        "huge_timesteps": ("config.json", set_(num_train_timesteps=10**12), "num_train_timesteps: got 1000000000000"),
        "features_list": ("config.json", set_(input_features=[1, 2]), "input_features: got [1, 2] (a mapping)"),
        "long_type": ("config.json", set_(type=[list(range(300))] * 300), "policy type [[0, 1, 2, 3, ...], "),
        "processor_deep": ("policy_preprocessor.json", lambda t: '{"steps": ' + _DEEP + "}",
                           "policy_preprocessor.json: nests more than"),
        "processor_steps": ("policy_preprocessor.json", lambda t: '{"steps": 5}', "steps: got 5 (a list)"),
        "processor_norm_map": ("policy_preprocessor.json", lambda t: t.replace('"norm_map": {', '"norm_map": [{')
                               .replace('"ACTION": "MIN_MAX"}', '"ACTION": "MIN_MAX"}]'), "norm_map: got [{"),
    }


def _hostile_lerobot(base: Path, where: Path, name: str) -> Path:
    import shutil

    fname, change, _ = _lerobot_cases()[name]
    d = where / name / "pretrained_model"
    shutil.copytree(base, d)
    (d / fname).write_text(change((base / fname).read_text()))
    return d


def test_lerobot_control_loads(lerobot_dir):
    from models.checkpoint_import.lerobot import read_lerobot

    imp = read_lerobot(lerobot_dir)
    assert imp.horizon == 8 and imp.n_obs_steps == 2


@pytest.mark.parametrize("name", list(_lerobot_cases()))
def test_hostile_lerobot_json_is_one_line(tmp_path, lerobot_dir, name):
    from models.checkpoint_import.lerobot import read_lerobot

    d = _hostile_lerobot(lerobot_dir, tmp_path, name)
    expected = _lerobot_cases()[name][2]
    for weights in (False, True):
        with pytest.raises(CheckpointError) as info:
            read_lerobot(d, weights=weights)
        msg = str(info.value)
        assert "\n" not in msg and expected in msg and len(msg) < 400, msg


def test_hostile_lerobot_dirs_exit_2_from_info_and_import(tmp_path, lerobot_dir):
    calls, expect = [], []
    for name in ("deep", "digits", "nan", "string_horizon", "processor_deep"):
        d = _hostile_lerobot(lerobot_dir, tmp_path, name)
        calls += [["info", str(d)], ["import", str(d), "--out", str(tmp_path / f"{name}_native")]]
        expect += [_lerobot_cases()[name][2]] * 2
    for (code, err), argv, expected in zip(_cli_many(calls), calls, expect):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (argv, code, err[-1500:])


# ---- native policy.yaml --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def native_dir(tmp_path_factory) -> Path:
    """A valid tiny (state-only) native checkpoint."""
    from models.native import save_native
    from models.policy import DiffusionPolicy
    from tests.test_import_configs import _lerobot_spec

    spec = _lerobot_spec(action_dim=2, image_features={}, state_features={"observation.state": [2]})
    torch.manual_seed(0)
    return save_native(DiffusionPolicy(spec), tmp_path_factory.mktemp("native") / "ckpt")


def _native_cases() -> dict[str, tuple[object, str]]:
    """name -> (function of policy.yaml text -> hostile text, text the refusal must contain)."""
    laughs = "[" + ", ".join(['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                             + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]"
    return {
        "anchor_bomb": (lambda t: t.replace("provenance:", f"provenance:\n  bomb: {laughs}"), "alias *a0"),
        "duplicate": (lambda t: t.replace("  horizon: 8\n", "  horizon: 8\n  horizon: 16\n"),
                      "spec.horizon: duplicate key at line"),
        "nan_horizon": (lambda t: t.replace("  horizon: 8\n", "  horizon: .nan\n"),
                        "spec.horizon: .nan is not a finite number"),
        "digits": (lambda t: t.replace("  horizon: 8\n", "  horizon: " + "9" * 5000 + "\n"),
                   "spec.horizon: integer with 5000 digits"),
        "deep": (lambda t: t.replace("provenance:", "provenance:\n  x: " + "[" * 5000 + "]" * 5000), "nested more than"),
        "huge_down_dims": (lambda t: t.replace("down_dims: [32, 64]", "down_dims: [1000000, 64]"),
                           "spec.unet.down_dims[0]: got 1000000 (an integer from 0 to 65536)"),
        "wide_down_dims": (lambda t: t.replace("down_dims: [32, 64]", "down_dims: [16384, 32768]"),
                           "the spec needs"),  # plausible numbers, but not what the weights hold
        "billion_timesteps": (lambda t: t.replace("kind: ddpm,", "kind: ddpm, num_train_timesteps: 1000000000,"),
                              "spec.scheduler.num_train_timesteps: got 1000000000"),
        "not_utf8": (lambda t: t.replace("provenance:", "provenance:\n  who: caf\udce9"), "is not UTF-8"),
    }


def _hostile_native(base: Path, where: Path, name: str) -> Path:
    import shutil

    change, _ = _native_cases()[name]
    d = where / name
    shutil.copytree(base, d)
    text = change((base / "policy.yaml").read_text())
    assert text != (base / "policy.yaml").read_text(), name
    (d / "policy.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    return d


@pytest.mark.parametrize("name", list(_native_cases()))
def test_hostile_native_spec_is_one_line(tmp_path, native_dir, name):
    from models.native import NativeCheckpointError, load_native, read_spec

    d = _hostile_native(native_dir, tmp_path, name)
    expected = _native_cases()[name][1]
    load = [load_native] if name == "wide_down_dims" else [read_spec, load_native]
    for fn in load:
        with pytest.raises(NativeCheckpointError) as info:
            fn(d)
        msg = str(info.value)
        assert "\n" not in msg and expected in msg and len(msg) < 400, (fn.__name__, msg)


def test_hostile_native_dirs_exit_2_from_info_check_and_run(tmp_path, native_dir):
    assert load_native_ok(native_dir)
    calls, expect = [], []
    for name in _native_cases():
        d = _hostile_native(native_dir, tmp_path, name)
        cfg = copy.deepcopy(GOOD)
        cfg["policy"]["checkpoint"] = str(d)
        cfg["cameras"] = []
        run_yaml = tmp_path / f"{name}.yaml"
        run_yaml.write_text(yaml.safe_dump(cfg))
        commands = [["run", str(run_yaml), "--duration", "1"]]
        if name != "wide_down_dims":  # info and check read policy.yaml only; the weights decide this one
            commands += [["info", str(d)], ["check", str(run_yaml)]]
        calls += commands
        expect += [(name, _native_cases()[name][1])] * len(commands)
    for (code, err), argv, (name, expected) in zip(_cli_many(calls), calls, expect):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (name, argv[0], code, err[-1500:])


def load_native_ok(d: Path) -> bool:
    from models.native import load_native

    return load_native(d).spec.horizon == 8
