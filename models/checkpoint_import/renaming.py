"""Key renaming from LeRobot / original state dicts to the native module names, checked strictly.

A silent mismatch here would give a policy that runs and acts wrongly, so `remap` insists that
every source tensor is used exactly once (aliases removed first, after checking they really are
aliases), every native tensor is filled, and every shape agrees; the first violation is reported
with the key that caused it.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import torch

from .errors import CheckpointError

# ResNet-18 trunk as an nn.Sequential of torchvision children (LeRobot `backbone.N`, robomimic
# `backbone.nets.N`): 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7 layer1..layer4.
_SEQ_TO_TORCHVISION = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def strip_compiled(key: str) -> str:
    """torch.compile wraps modules as `_orig_mod`; the weights are the same."""
    return key.replace("_orig_mod.", "")


def seq_trunk_to_native(rest: str) -> str | None:
    """'4.0.conv1.weight' -> 'layer1.0.conv1.weight' (None if the index is not a trunk child)."""
    head, _, tail = rest.partition(".")
    name = _SEQ_TO_TORCHVISION.get(head)
    return None if name is None or not tail else f"{name}.{tail}"


def lerobot_unet_to_native(rest: str) -> str:
    """LeRobot names the two conv blocks conv1/conv2 and keeps up/down convs bare; native follows
    the original (`blocks.0/1`, `.2.conv`)."""
    rest = re.sub(r"\.conv1\.block\.", ".blocks.0.block.", rest)
    rest = re.sub(r"\.conv2\.block\.", ".blocks.1.block.", rest)
    rest = re.sub(r"^((?:down|up)_modules\.\d+\.2)\.(weight|bias)$", r"\1.conv.\2", rest)
    return rest


def drop_aliases(sd: Mapping[str, torch.Tensor], alias_of: Callable[[str], str | None], source: str) -> dict:
    """Remove keys that duplicate another key's tensor, after checking they are the same data."""
    out = {}
    for key, t in sd.items():
        canon = alias_of(key)
        if canon is None:
            out[key] = t
            continue
        other = sd.get(canon)
        if other is None:
            raise CheckpointError(f"{source}: {key} looks like an alias of {canon}, which is missing")
        if t.is_meta or other.is_meta:  # description only: values are not read
            if t.shape != other.shape:
                raise CheckpointError(f"{source}: {key} should alias {canon} but has another shape")
            continue
        same_memory = (t.data_ptr() == other.data_ptr() and t.shape == other.shape and t.stride() == other.stride())
        if not same_memory and not (t.shape == other.shape and torch.equal(t, other)):
            raise CheckpointError(f"{source}: {key} should alias {canon} but holds different values")
    return out


def remap(
    sd: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    target: Mapping[str, torch.Size],
    source: str,
    what: str,
    src_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Rename `sd` into `target`'s keys; every key used once, every target filled, shapes equal.

    `src_prefix` is what the caller stripped from the file's keys, so messages show them as stored.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, t in sd.items():
        shown = src_prefix + key
        new = rename(key)
        if new is None:
            raise CheckpointError(f"{source}: unexpected {what} key {shown} (no native counterpart)")
        if new not in target:
            raise CheckpointError(f"{source}: {what} key {shown} maps to {new}, which the model built from the "
                                  "checkpoint's config does not have (config and weights disagree)")
        if new in out:
            raise CheckpointError(f"{source}: {shown} and {src_prefix}{origin[new]} both map to {what} {new}")
        if tuple(t.shape) != tuple(target[new]):
            raise CheckpointError(f"{source}: {shown} has shape {tuple(t.shape)} but the model built from the "
                                  f"checkpoint's config expects {tuple(target[new])} for {new}")
        out[new] = t
        origin[new] = key
    missing = [k for k in target if k not in out]
    if missing:
        raise CheckpointError(f"{source}: {what} weight {missing[0]} is missing from the file"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return out


def split_prefix(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Group keys by the first matching prefix (prefix stripped); others go under ''."""
    prefixes = list(prefixes)
    groups: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    groups[""] = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                groups[p][k[len(p):]] = v
                break
        else:
            groups[""][k] = v
    return groups


def target_shapes(module_factory: Callable[[], torch.nn.Module]) -> dict[str, torch.Size]:
    """State-dict shapes of a module built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        m = module_factory()
    return {k: v.shape for k, v in m.state_dict().items()}
