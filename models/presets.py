"""Architecture presets: named PolicySpec YAML files in models/presets/.

A preset is an architecture without weights; ``preset:NAME`` in a run config gives a randomly
initialised policy of that shape, which is enough to measure latency, exercise the loops and
start training (``edgedp init-policy``).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from models.spec import PolicySpec, SpecError

PRESET_DIR = Path(__file__).resolve().parent / "presets"


class UnknownPresetError(ValueError):
    """No preset of that name; the message lists the ones that exist."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> PolicySpec:
    path = PRESET_DIR / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        raise UnknownPresetError(f"unknown preset {name!r} (available: {', '.join(list_presets())})")
    try:
        data = yaml.safe_load(path.read_text())
        spec = PolicySpec.from_dict(data)
    except (yaml.YAMLError, SpecError) as exc:
        raise SpecError(f"preset {path}: {exc}") from None
    spec.source = spec.source or f"preset:{name}"
    return spec
