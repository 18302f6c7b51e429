"""Load a shipped example config as a dict whose relative paths still work after it is copied elsewhere."""
from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str = "sim.yaml") -> dict:
    path = EXAMPLES / name
    data = yaml.safe_load(path.read_text())
    ck = data["policy"]["checkpoint"]
    if not ck.startswith("preset:") and not Path(ck).is_absolute():
        data["policy"]["checkpoint"] = str((path.parent / ck).resolve())
    return data
