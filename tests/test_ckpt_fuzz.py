"""A few hundred damaged checkpoints: each loads or fails with one clear line; none crashes or hangs.

The seed checkpoint is a tiny workspace-shaped file built here (OmegaConf-like config objects,
model/ema state dicts with an aliased tensor, nested pickle blobs), so the fuzz exercises the
same code paths as a real `.ckpt` while staying fast.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import random
import struct
import sys
import threading
import types
import zipfile
from pathlib import Path

import pytest
import torch

from models.checkpoint_import import CheckpointError, load_torch_zip

from models.checkpoint_import.original_ckpt import read_workspace_checkpoint
from models.unet1d import ConditionalUnet1D

N_TRUNC, N_FLIP_FILE, N_FLIP_PKL, N_STORAGE, TIMEOUT_S = 60, 100, 120, 20, 20.0
N_SWAP, N_INTS = 40, 60


def _fake_omegaconf_modules():
    """Classes whose pickles look like OmegaConf's (NEWOBJ + BUILD of a state dict)."""
    made = {"omegaconf": types.ModuleType("omegaconf")}
    for mod, names in {"omegaconf.dictconfig": ["DictConfig"], "omegaconf.listconfig": ["ListConfig"],
                       "omegaconf.nodes": ["AnyNode"], "omegaconf.base": ["ContainerMetadata", "Metadata"]}.items():
        m = types.ModuleType(mod)
        for n in names:
            cls = type(n, (), {"__module__": mod, "__getstate__": lambda self: self.__dict__})
            cls.__qualname__ = n
            setattr(m, n, cls)
        made[mod] = m
        setattr(made["omegaconf"], mod.split(".")[1], m)
    return made


def _node(mods, val, parent=None):
    n = mods["omegaconf.nodes"].AnyNode()
    meta = mods["omegaconf.base"].Metadata()
    meta.__dict__.update(ref_type=None, object_type=None, optional=True, key=None, flags={})
    n.__dict__.update(_metadata=meta, _parent=parent, _val=val)
    return n


def _dictcfg(mods, content):
    d = mods["omegaconf.dictconfig"].DictConfig()
    meta = mods["omegaconf.base"].ContainerMetadata()
    meta.__dict__.update(ref_type=None, object_type=dict, optional=True, key=None, flags={"struct": True})
    d.__dict__.update(_metadata=meta, _parent=None, _content={})
    for k, v in content.items():
        if isinstance(v, dict):
            d._content[k] = _dictcfg(mods, v)
        elif isinstance(v, list):
            lc = mods["omegaconf.listconfig"].ListConfig()
            lc.__dict__.update(_metadata=None, _parent=d, _content=[_node(mods, x) for x in v])
            d._content[k] = lc
        else:
            d._content[k] = _node(mods, v, d)
    return d


@pytest.fixture(scope="module")
def seed_ckpt(tmp_path_factory) -> bytes:
    mods = _fake_omegaconf_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        # A complete (tiny) low-dim workspace, so the full importer runs on every mutant too.
        unet_cfg = {"_target_": "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D",
                    "input_dim": 2, "global_cond_dim": 6, "local_cond_dim": None, "diffusion_step_embed_dim": 8,
                    "down_dims": [8, 16], "kernel_size": 3, "n_groups": 4, "cond_predict_scale": True}
        cfg = _dictcfg(mods, {
            "_target_": "diffusion_policy.workspace.train_diffusion_unet_lowdim_workspace.TrainDiffusionUnetLowdimWorkspace",
            "horizon": 4, "n_obs_steps": 2, "n_action_steps": 2,
            "training": {"use_ema": True},
            "policy": {"_target_": "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy",
                       "model": unet_cfg, "horizon": 4, "n_obs_steps": 2, "n_action_steps": 2, "obs_dim": 3,
                       "action_dim": 2, "num_inference_steps": 4, "obs_as_global_cond": True,
                       "oa_step_convention": True,
                       "noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                                           "num_train_timesteps": 10, "beta_schedule": "squaredcos_cap_v2",
                                           "variance_type": "fixed_small", "clip_sample": True,
                                           "prediction_type": "epsilon"}},
        })
        torch.manual_seed(0)
        unet = ConditionalUnet1D(2, 6, diffusion_step_embed_dim=8, down_dims=[8, 16], kernel_size=3, n_groups=4)
        model = {"model." + k: v for k, v in unet.state_dict().items()}
        model.update({"normalizer.params_dict.obs.scale": torch.full((3,), 0.01),
                      "normalizer.params_dict.obs.offset": torch.zeros(3),
                      "normalizer.params_dict.action.scale": torch.full((2,), 0.02),
                      "normalizer.params_dict.action.offset": torch.full((2,), -1.0),
                      "_dummy_variable": torch.zeros(0)})
        # EMA differs in small tensors and shares storage with the model for big ones, as real files do.
        ema = {k: (v + 0.01 if v.numel() < 64 and v.numel() else v) for k, v in model.items()}
        payload = {"cfg": cfg, "state_dicts": {"model": model, "ema_model": ema, "optimizer": {"state": {},
                   "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}},
                   "pickles": {"global_step": pickle.dumps(12, protocol=4), "_output_dir": pickle.dumps(None)}}
        buf = io.BytesIO()
        torch.save(payload, buf, pickle_protocol=2)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return buf.getvalue()


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _rezip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _flip(data: bytes, rng: random.Random, nbits: int) -> bytes:
    b = bytearray(data)
    for _ in range(nbits):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _mutants(seed: bytes) -> list[tuple[str, bytes]]:
    rng = random.Random(1234)
    out: list[tuple[str, bytes]] = []
    for _ in range(N_TRUNC):
        n = rng.randrange(len(seed))
        out.append((f"trunc{n}", seed[:n]))
    for i in range(N_FLIP_FILE):
        out.append((f"fileflip{i}", _flip(seed, rng, rng.randint(1, 3))))
    members = _members(seed)
    pkl_idx = next(i for i, (n, _) in enumerate(members) if n.endswith("data.pkl"))
    for i in range(N_FLIP_PKL):
        m = list(members)
        name, data = m[pkl_idx]
        kind = rng.randrange(3)
        if kind == 0:
            data = _flip(data, rng, rng.randint(1, 4))
        elif kind == 1:
            data = data[: rng.randrange(len(data))]
        else:
            j = rng.randrange(len(data))
            data = data[:j] + bytes([rng.randrange(256)]) + data[j + 1:]
        m[pkl_idx] = (name, data)
        out.append((f"pklmut{i}", _rezip(m)))
    st_idx = [i for i, (n, d) in enumerate(members) if "/data/" in n and d]
    for i in range(N_STORAGE):
        m = list(members)
        j = rng.choice(st_idx)
        name, data = m[j]
        m[j] = (name, data[: rng.randrange(len(data))] if i % 2 else data + b"\x00" * rng.randint(1, 9))
        if i % 5 == 0:
            m.pop(j)
        out.append((f"storage{i}", _rezip(m)))
    out += _semantic_mutants(members, pkl_idx, rng)
    out += [("empty", b""), ("text", b"hello"), ("legacy", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")]
    return out


# Every global the restricted unpickler allows, as protocol-2 GLOBAL text.
_ALLOWED = [b"collections\nOrderedDict\n", b"collections\ndefaultdict\n", b"dill._dill\n_load_type\n",
            b"_codecs\nencode\n", b"__builtin__\nbytes\n", b"__builtin__\nstr\n", b"__builtin__\nlist\n",
            b"__builtin__\ntuple\n", b"__builtin__\nset\n", b"__builtin__\ncomplex\n", b"__builtin__\nslice\n",
            b"torch._utils\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_parameter\n", b"torch\nFloatStorage\n",
            b"omegaconf.dictconfig\nDictConfig\n", b"omegaconf.nodes\nAnyNode\n"]
_EXTREME_INTS = [0, 1, -1, 2**31 - 1, 2**30, 600_000_000]


def _semantic_mutants(members, pkl_idx, rng) -> list[tuple[str, bytes]]:
    """Well-formed pickles that call the allowed globals with the wrong arguments (each GLOBAL swapped
    for another allowed one) or give tensors extreme sizes/strides/offsets (each small integer set to
    0, -1, 2**31-1, ...): the hostile cases a bit flip rarely reaches. They must fail with one line or
    load, never hang or allocate gigabytes."""
    name, data = members[pkl_idx]
    ops = list(pickletools.genops(data))
    globals_at = [(pos, len(b"c" + arg.replace(" ", "\n").encode() + b"\n")) for op, arg, pos in ops
                  if op.name == "GLOBAL"]
    ints_at = [(pos, op.name) for op, arg, pos in ops if op.name in ("BININT", "BININT1", "BININT2")]
    size = {"BININT": 5, "BININT1": 2, "BININT2": 3}
    out = []
    for i in range(N_SWAP):
        pos, length = rng.choice(globals_at)
        mutated = data[:pos] + b"c" + rng.choice(_ALLOWED) + data[pos + length:]
        m = list(members)
        m[pkl_idx] = (name, mutated)
        out.append((f"swap{i}", _rezip(m)))
    for i in range(N_INTS):
        mutated = data
        for pos, op in sorted(rng.sample(ints_at, 3), reverse=True):  # three at once, from the end
            mutated = mutated[:pos] + b"J" + struct.pack("<i", rng.choice(_EXTREME_INTS)) + mutated[pos + size[op]:]
        m = list(members)
        m[pkl_idx] = (name, mutated)
        out.append((f"ints{i}", _rezip(m)))
    return out


def _load_with_timeout(path: Path):
    result: dict = {}

    def work():
        try:
            obj = load_torch_zip(path)
            try:  # the full importer (cfg interpretation, lazy reads, renaming) on the same file
                read_workspace_checkpoint(path)
            except CheckpointError as err:
                result["err2"] = err
            result["ok"] = obj
        except BaseException as err:  # noqa: BLE001 - we classify below
            result["err"] = err

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(TIMEOUT_S)
    assert not t.is_alive(), f"{path.name}: load hung for {TIMEOUT_S} s"
    return result


def test_seed_loads_as_plain_data(seed_ckpt, tmp_path):
    p = tmp_path / "seed.ckpt"
    p.write_bytes(seed_ckpt)
    obj = load_torch_zip(p)
    assert obj["cfg"]["policy"]["model"]["down_dims"] == [8, 16]
    assert obj["cfg"]["policy"]["model"]["local_cond_dim"] is None
    assert obj["cfg"]["training"]["use_ema"] is True
    big = "model.mid_modules.0.blocks.0.block.0.weight"
    sds = obj["state_dicts"]
    assert sds["model"][big].data_ptr() == sds["ema_model"][big].data_ptr()  # shared storage kept
    assert pickle.loads(obj["pickles"]["global_step"]) == 12
    imp = read_workspace_checkpoint(p)
    assert imp.architecture == "DiffusionUnetLowdimPolicy" and "ema_model" in imp.provenance["weights"]
    assert torch.equal(imp.unet_state["final_conv.1.bias"], sds["ema_model"]["model.final_conv.1.bias"])


def test_mutated_checkpoints_fail_cleanly(seed_ckpt, tmp_path):
    mutants = _mutants(seed_ckpt)
    assert len(mutants) >= 400
    counts = {"ok": 0, "error": 0, "import_error": 0}
    for name, data in mutants:
        p = tmp_path / f"{name}.ckpt"
        p.write_bytes(data)
        res = _load_with_timeout(p)
        if "err" in res:
            err = res["err"]
            assert isinstance(err, CheckpointError), f"{name}: {type(err).__name__}: {err}"
            msg = str(err)
            assert msg and "\n" not in msg and p.name in msg, f"{name}: unclear message {msg!r}"
            counts["error"] += 1
        else:
            counts["ok"] += 1
            if "err2" in res:
                msg = str(res["err2"])
                assert msg and "\n" not in msg and p.name in msg, f"{name}: unclear importer message {msg!r}"
                counts["import_error"] += 1
        p.unlink()
    print(f"fuzz: {len(mutants)} mutants, {counts['error']} rejected with one line, {counts['ok']} unpickled "
          f"({counts['import_error']} of those then refused by the importer with one line)")
    # Most mutants must be rejected (CRC/structure checks work), and the seed's kind of file still loads.
    assert counts["error"] > len(mutants) // 2, counts
