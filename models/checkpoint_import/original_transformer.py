"""The transformer part of reading an original `.ckpt`: TransformerForDiffusion options and weights.

`original_ckpt` does everything a workspace has in common (cfg, scheduler, observation keys,
robomimic encoder, normalizer); this module answers only what differs for the two transformer
policies of the original code:

  DiffusionTransformerHybridImagePolicy  options at cfg.policy.{n_layer, n_head, n_emb, ...}
  DiffusionTransformerLowdimPolicy       options at cfg.policy.model.* (hydra-instantiated module)

Supported: observation tokens as condition (obs_as_cond=True, one token per observation step),
causal or full attention, MLP or self-attention condition encoder (n_cond_layers). Refused by
name: obs_as_cond=False (observations inpainted into the trajectory), time_as_cond=False (needs
obs_as_cond=False), pred_action_steps_only=True. The stored attention masks are compared with
the ones these options produce, so a file whose masks say something else is refused, not run.
"""
from __future__ import annotations

from typing import Any

import torch

from models.transformer1d import TransformerForDiffusion, causal_mask, condition_mask

from .errors import CheckpointError, UnsupportedCheckpointError
from .fields import MAX_DIM, MAX_STEPS, get_bool, get_float, get_int, section

HYBRID = "DiffusionTransformerHybridImagePolicy"
LOWDIM = "DiffusionTransformerLowdimPolicy"
POLICIES = (HYBRID, LOWDIM)
MODEL_TARGET = "TransformerForDiffusion"


def check_policy_options(name: str, pol: dict, policy_cls: str) -> None:
    """Settings of the transformer policies that edgedp does not run, refused by name."""
    if not get_bool(pol, "obs_as_cond", name, "cfg.policy", policy_cls == HYBRID):
        raise UnsupportedCheckpointError(f"{name}: cfg.policy.obs_as_cond=False (observations inpainted into the "
                                         "trajectory) is not supported; only obs_as_cond=True")
    if get_bool(pol, "pred_action_steps_only", name, "cfg.policy", False):
        raise UnsupportedCheckpointError(f"{name}: cfg.policy.pred_action_steps_only=True is not supported")


def options_source(pol: dict, policy_cls: str, name: str) -> tuple[dict, str]:
    """Where the TransformerForDiffusion options live in the cfg."""
    if policy_cls == LOWDIM:
        mcfg = section(pol, "model", name, "cfg.policy", required=True)
        target = str(mcfg.get("_target_", "")).rsplit(".", 1)[-1]
        if target != MODEL_TARGET:
            raise UnsupportedCheckpointError(f"{name}: unsupported denoiser {target or '?'} for {policy_cls} "
                                             f"(only {MODEL_TARGET})")
        return mcfg, "cfg.policy.model"
    return pol, "cfg.policy"


def transformer_kwargs(name: str, pol: dict, policy_cls: str, action_dim: int, per_frame: int,
                       horizon: int, n_obs: int, prov: dict) -> dict[str, Any]:
    """TransformerForDiffusion keyword arguments from the cfg (defaults: the reference constructors')."""
    src, w = options_source(pol, policy_cls, name)
    lowdim = policy_cls == LOWDIM
    # The lowdim policy instantiates the module from cfg.policy.model (module defaults apply); the
    # hybrid policy passes its own arguments (its defaults apply).
    d = dict(n_layer=12, n_head=12, n_emb=768, p_drop_emb=0.1, p_drop_attn=0.1, causal_attn=False) if lowdim else \
        dict(n_layer=8, n_head=4, n_emb=256, p_drop_emb=0.0, p_drop_attn=0.3, causal_attn=True)
    kw = dict(
        input_dim=action_dim, output_dim=action_dim, horizon=horizon, n_obs_steps=n_obs, cond_dim=per_frame,
        n_layer=get_int(src, "n_layer", name, w, 1, 1024, d["n_layer"]),
        n_head=get_int(src, "n_head", name, w, 1, 1024, d["n_head"]),
        n_emb=get_int(src, "n_emb", name, w, 2, MAX_DIM, d["n_emb"]),
        p_drop_emb=get_float(src, "p_drop_emb", name, w, d["p_drop_emb"], 0.0, 1.0),
        p_drop_attn=get_float(src, "p_drop_attn", name, w, d["p_drop_attn"], 0.0, 1.0),
        causal_attn=get_bool(src, "causal_attn", name, w, d["causal_attn"]),
        time_as_cond=get_bool(src, "time_as_cond", name, w, True),
        n_cond_layers=get_int(src, "n_cond_layers", name, w, 0, 1024, 0),
    )
    if not kw["time_as_cond"]:
        raise UnsupportedCheckpointError(f"{name}: {w}.time_as_cond=False (time token as input, encoder-only) is not "
                                         "supported; only time_as_cond=True")
    if kw["n_emb"] % kw["n_head"] or kw["n_emb"] % 2:
        raise CheckpointError(f"{name}: {w}.n_emb={kw['n_emb']} must be even and divisible by n_head={kw['n_head']}")
    if lowdim:  # the module's own copies of the shapes must agree with the policy's
        for key, want in (("input_dim", action_dim), ("output_dim", action_dim), ("horizon", horizon),
                          ("n_obs_steps", n_obs), ("cond_dim", per_frame)):
            got = get_int(src, key, name, w, 0, MAX_DIM if key.endswith("dim") else MAX_STEPS, want)
            if got != want:
                raise CheckpointError(f"{name}: {w}.{key}={got} but the policy needs {want}")
    prov["transformer"] = (f"{w}: n_layer, n_head, n_emb, n_cond_layers, causal_attn, time_as_cond, p_drop_*; "
                           "cond_dim = per-frame observation features")
    return kw


def transformer_state(name: str, model_sd: dict[str, torch.Tensor], kw: dict[str, Any], remap, target_shapes
                      ) -> dict[str, torch.Tensor]:
    """The denoiser's weights under their own (= reference) names, shapes checked, masks verified."""
    target = target_shapes(lambda: TransformerForDiffusion(**kw))
    state = remap(model_sd, lambda k: k, target, name, "transformer", "model.")
    n_tokens, n_cond = kw["horizon"], 1 + kw["n_obs_steps"]
    want = {"mask": causal_mask(n_tokens), "memory_mask": condition_mask(n_tokens, n_cond)} if kw["causal_attn"] else {}
    for key, ref in want.items():
        got = state.get(key)
        if got is None or got.is_meta:
            continue
        if tuple(got.shape) != tuple(ref.shape) or not torch.equal(torch.isinf(got), torch.isinf(ref)) \
                or not torch.equal(got[~torch.isinf(got)], ref[~torch.isinf(ref)]):
            raise CheckpointError(f"{name}: model.{key} is not the attention mask causal_attn=True makes "
                                  "(the file's masks would compute something else)")
    return state


def summary(kw: dict[str, Any]) -> str:
    attn = "causal" if kw["causal_attn"] else "full"
    enc = f"{kw['n_cond_layers']}-layer attention" if kw["n_cond_layers"] else "MLP"
    return (f"{kw['n_layer']} layers, {kw['n_head']} heads, n_emb {kw['n_emb']}, {attn} attention, condition "
            f"encoder {enc}, {kw['n_obs_steps']} obs tokens of {kw['cond_dim']}")
