"""edgedp: an edge runtime for Diffusion Policy robots."""
from __future__ import annotations

__version__ = "0.1.0"


def load_policy(path, device: str = "cpu", **kwargs):
    """Load a native, LeRobot or original-implementation checkpoint as a policy object.

    Imported lazily so that `import edgedp` (and the CLI's config check) stays fast and torch-free.
    """
    from edgedp.policy_loading import load_policy as _load

    return _load(path, device=device, **kwargs)
