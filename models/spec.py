"""PolicySpec: everything needed to build a DiffusionPolicy, as plain data that round-trips through YAML.

A checkpoint's architecture lives here (not in code defaults) so that a native checkpoint,
a LeRobot import and an original ``.ckpt`` import all produce the same kind of description, and
``describe_checkpoint`` can answer shape questions without building the network.

``from_dict`` is strict: an unknown key or a wrong type raises SpecError naming the field path,
because a silently ignored typo in an architecture file produces a network that loads no weights.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from models.normalizer import CONVENTIONS, MODES

FORMAT_VERSION = 1


class SpecError(ValueError):
    """The policy description is invalid; the message names the field."""


@dataclass
class EncoderSpec:
    """Image encoder options (see models/encoder.py)."""

    backbone: str = "resnet18"
    width: int = 64                       # trunk base channels (64 = real ResNet-18)
    norm: str = "group"                   # group | batch
    pool: str = "spatial_softmax"         # spatial_softmax | avg
    num_keypoints: int = 32
    feature_dim: int = 64
    relu: bool = True
    shared: bool = True                   # one encoder for all cameras, else one per camera
    crop_shape: list[int] | None = None   # [h, w] center crop at inference
    resize_shape: list[int] | None = None  # [h, w] bilinear resize before the crop
    softmax_layout: str = "lerobot"       # lerobot | robomimic (buffer names and arithmetic)
    softmax_temperature: float = 1.0
    project: bool = True                  # Linear(+ReLU) after the pool; false: pooled features as is
    imagenet_norm: bool = False           # (x - ImageNet mean) / std after the crop (original image policy)


@dataclass
class UnetSpec:
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    cond_predict_scale: bool = True


@dataclass
class TransformerSpec:
    """The transformer denoiser (models/transformer1d.py); defaults = the original hybrid config.

    p_drop_* act in training only (eval runs no dropout). The observation condition is always on
    (one token per observation step), so time_as_cond must stay true."""

    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    n_cond_layers: int = 0                # 0: MLP over the condition tokens; > 0: self-attention layers
    causal_attn: bool = True
    time_as_cond: bool = True
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3


DENOISERS = ("unet", "transformer")


@dataclass
class NormalizationSpec:
    """``modes`` maps every feature key (and the action key) to min_max | mean_std | identity."""

    convention: str = "lerobot"
    modes: dict[str, str] = field(default_factory=dict)


@dataclass
class PolicySpec:
    action_dim: int
    image_features: dict[str, list[int]] = field(default_factory=dict)   # key -> [3, H, W]
    state_features: dict[str, list[int]] = field(default_factory=dict)   # key -> [D]
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    feature_order: list[str] | None = None  # per-frame order; default: state keys, then image keys
    action_key: str = "action"
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    unet: UnetSpec = field(default_factory=UnetSpec)
    denoiser: str = "unet"              # unet | transformer: which section below builds the network
    transformer: TransformerSpec = field(default_factory=TransformerSpec)
    scheduler: dict[str, Any] = field(default_factory=dict)  # parsed by models.schedulers.SchedulerSpec
    normalization: NormalizationSpec = field(default_factory=NormalizationSpec)
    action_period: float | None = None  # seconds between actions, when the source says
    name: str = ""
    source: str = ""                    # e.g. "preset:small", "lerobot:/path", "diffusion_policy:/x.ckpt"
    provenance: dict[str, Any] = field(default_factory=dict)

    # ---- derived -------------------------------------------------------------------------
    @property
    def image_keys(self) -> list[str]:
        return list(self.image_features)

    @property
    def state_keys(self) -> list[str]:
        return list(self.state_features)

    @property
    def resolved_feature_order(self) -> list[str]:
        return list(self.feature_order) if self.feature_order else self.state_keys + self.image_keys

    def norm_mode(self, key: str) -> str:
        if key in self.normalization.modes:
            return self.normalization.modes[key]
        if key in self.image_features:
            return "mean_std"
        return "min_max"

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> "PolicySpec":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SpecError(msg)

        need(self.action_dim >= 1, f"action_dim: must be >= 1, got {self.action_dim}")
        need(self.n_obs_steps >= 1, f"n_obs_steps: must be >= 1, got {self.n_obs_steps}")
        need(self.horizon >= 1, f"horizon: must be >= 1, got {self.horizon}")
        need(1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1,
             f"n_action_steps: must be in 1..horizon-n_obs_steps+1 = {self.horizon - self.n_obs_steps + 1}, "
             f"got {self.n_action_steps}")
        need(bool(self.image_features or self.state_features), "image_features/state_features: no observation features")
        for k, s in self.image_features.items():
            need(len(s) == 3 and s[0] == 3 and s[1] > 0 and s[2] > 0,
                 f"image_features.{k}: expected [3, H, W], got {list(s)}")
        for k, s in self.state_features.items():
            need(len(s) == 1 and s[0] >= 1, f"state_features.{k}: expected [D], got {list(s)}")
        overlap = set(self.image_features) & set(self.state_features)
        need(not overlap, f"state_features: keys also used as images: {sorted(overlap)}")
        need(self.action_key not in self.image_features and self.action_key not in self.state_features,
             f"action_key: {self.action_key!r} is also an observation feature")
        if self.feature_order:
            want = sorted(self.image_keys + self.state_keys)
            need(sorted(self.feature_order) == want,
                 f"feature_order: must list each feature exactly once ({want}), got {list(self.feature_order)}")
        need(self.denoiser in DENOISERS, f"denoiser: allowed {', '.join(DENOISERS)}; got {self.denoiser!r}")
        if self.denoiser == "transformer":
            self._validate_transformer(need)
        else:
            self._validate_unet(need)
        if self.image_features:
            self._validate_encoder(need)
        n = self.normalization
        need(n.convention in CONVENTIONS, f"normalization.convention: allowed {', '.join(CONVENTIONS)}; got {n.convention!r}")
        known = set(self.image_keys) | set(self.state_keys) | {self.action_key}
        for k, m in n.modes.items():
            need(k in known, f"normalization.modes.{k}: not a feature of this policy (features: {sorted(known)})")
            need(m in MODES, f"normalization.modes.{k}: allowed {', '.join(MODES)}; got {m!r}")
        need(self.action_period is None or self.action_period > 0, f"action_period: must be > 0, got {self.action_period}")
        need(isinstance(self.scheduler, dict), "scheduler: must be a mapping")
        return self

    def _validate_unet(self, need) -> None:
        u = self.unet
        need(len(u.down_dims) >= 1 and all(d >= 1 for d in u.down_dims), f"unet.down_dims: bad {u.down_dims}")
        need(all(d % u.n_groups == 0 for d in u.down_dims),
             f"unet.down_dims: each must be divisible by unet.n_groups={u.n_groups}, got {u.down_dims}")
        need(u.kernel_size % 2 == 1, f"unet.kernel_size: must be odd, got {u.kernel_size}")
        need(u.diffusion_step_embed_dim >= 4 and u.diffusion_step_embed_dim % 2 == 0,
             f"unet.diffusion_step_embed_dim: must be even and >= 4, got {u.diffusion_step_embed_dim}")
        factor = 2 ** (len(u.down_dims) - 1)
        need(self.horizon % factor == 0,
             f"horizon: must be divisible by 2**(len(unet.down_dims)-1) = {factor}, got {self.horizon}")

    def _validate_transformer(self, need) -> None:
        t = self.transformer
        need(t.n_layer >= 1, f"transformer.n_layer: must be >= 1, got {t.n_layer}")
        need(t.n_head >= 1 and t.n_emb >= 4 and t.n_emb % 2 == 0 and t.n_emb % t.n_head == 0,
             f"transformer.n_emb: must be even, >= 4 and divisible by transformer.n_head={t.n_head}, got {t.n_emb}")
        need(t.n_cond_layers >= 0, f"transformer.n_cond_layers: must be >= 0, got {t.n_cond_layers}")
        need(t.time_as_cond, "transformer.time_as_cond: false (time token as input, BERT-style) works only without "
                             "an observation condition; edgedp policies always condition on observations")
        for name in ("p_drop_emb", "p_drop_attn"):
            v = getattr(t, name)
            need(0.0 <= v < 1.0, f"transformer.{name}: must be in [0, 1), got {v}")

    def _validate_encoder(self, need) -> None:
        e = self.encoder
        need(e.backbone == "resnet18", f"encoder.backbone: only resnet18 is supported, got {e.backbone!r}")
        need(e.norm in ("group", "batch"), f"encoder.norm: allowed group, batch; got {e.norm!r}")
        need(e.pool in ("spatial_softmax", "avg"), f"encoder.pool: allowed spatial_softmax, avg; got {e.pool!r}")
        need(e.softmax_layout in ("lerobot", "robomimic"),
             f"encoder.softmax_layout: allowed lerobot, robomimic; got {e.softmax_layout!r}")
        need(e.width >= 16 and (e.norm != "group" or e.width % 16 == 0),
             f"encoder.width: must be >= 16 (a multiple of 16 with group norm), got {e.width}")
        need(e.feature_dim >= 1 and e.num_keypoints >= 1, "encoder.feature_dim/num_keypoints: must be >= 1")
        for name in ("crop_shape", "resize_shape"):
            v = getattr(e, name)
            need(v is None or (len(v) == 2 and v[0] > 0 and v[1] > 0), f"encoder.{name}: expected [h, w] or null, got {v}")
        if e.shared:
            shapes = {tuple(s) for s in self.image_features.values()}
            need(len(shapes) <= 1, f"encoder.shared: cameras have different shapes {sorted(shapes)}; set shared: false")
        for k, s in self.image_features.items():
            h, w = (e.resize_shape or s[1:])
            if e.crop_shape:
                need(e.crop_shape[0] <= h and e.crop_shape[1] <= w,
                     f"encoder.crop_shape: {e.crop_shape} is larger than image {k} ({h}x{w})")
                h, w = e.crop_shape
            need(h >= 32 and w >= 32, f"image_features.{k}: {h}x{w} is too small for a ResNet trunk (need >= 32)")

    # ---- YAML-friendly dicts -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_features"] = {k: [int(v) for v in s] for k, s in self.image_features.items()}
        d["state_features"] = {k: [int(v) for v in s] for k, s in self.state_features.items()}
        # Only the denoiser in use is written: U-Net files stay as they were, and no section is dead weight.
        if self.denoiser == "unet":
            d.pop("denoiser"), d.pop("transformer")
        else:
            d.pop("unet")
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PolicySpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"(spec): expected a mapping, got {type(data).__name__}")
        kwargs = _fields_from(cls, data, "", skip=("encoder", "unet", "transformer", "normalization"))
        unused = "transformer" if kwargs.get("denoiser", "unet") == "unet" else "unet"
        if data.get(unused) is not None:
            raise SpecError(f"{unused}: not used with denoiser: {kwargs.get('denoiser', 'unet')} (remove it, or set "
                            f"denoiser: {unused})")
        for name, sub in (("encoder", EncoderSpec), ("unet", UnetSpec), ("transformer", TransformerSpec),
                          ("normalization", NormalizationSpec)):
            if data.get(name) is not None:
                if not isinstance(data[name], Mapping):
                    raise SpecError(f"{name}: expected a mapping, got {type(data[name]).__name__}")
                kwargs[name] = sub(**_fields_from(sub, data[name], name + "."))
        if "action_dim" not in kwargs:
            raise SpecError("action_dim: missing")
        spec = cls(**kwargs)
        for name in ("image_features", "state_features"):
            table = getattr(spec, name) or {}
            for k, v in table.items():
                if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                    raise SpecError(f"{name}.{k}: expected a list of integers, got {v!r}")
            setattr(spec, name, {str(k): [int(x) for x in v] for k, v in table.items()})
        return spec.validate()


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _fields_from(cls: type, data: Mapping[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Pick dataclass fields out of a mapping, rejecting unknown keys and obviously wrong scalar types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise SpecError(f"{prefix}{unknown[0]}: unknown field (allowed: {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k in skip:
            continue
        t = str(known[k].type).replace(" ", "")
        base = t.split("|")[0]
        if v is None:
            if "None" not in t:
                raise SpecError(f"{prefix}{k}: must not be null")
        elif base in _SCALARS:
            ok = isinstance(v, _SCALARS[base]) and not (base in ("int", "float") and isinstance(v, bool))
            if not ok:
                raise SpecError(f"{prefix}{k}: expected {base}, got {type(v).__name__} ({v!r})")
        elif base.startswith("list") and not isinstance(v, (list, tuple)):
            raise SpecError(f"{prefix}{k}: expected a list, got {type(v).__name__} ({v!r})")
        elif base.startswith("dict") and not isinstance(v, Mapping):
            raise SpecError(f"{prefix}{k}: expected a mapping, got {type(v).__name__} ({v!r})")
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
