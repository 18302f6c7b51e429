"""edgedp: an edge runtime for Diffusion Policy robots."""
from __future__ import annotations

__version__ = "0.1.0"


def load_policy(path, device: str = "cpu", scheduler: str | None = None, steps: int | None = None, **kwargs):
    """Load a native, LeRobot or original-implementation checkpoint (or ``preset:NAME``) as a policy.

    ``scheduler="ddim", steps=10`` samples with DDIM in 10 steps whatever the checkpoint was trained
    with, exactly as ``edgedp import --scheduler ddim --steps 10`` does. Other keyword arguments:
    ``num_inference_steps`` (same as ``steps``) and ``seed``.

    Imported lazily so that `import edgedp` (and the CLI's config check) stays fast and torch-free.
    """
    from edgedp.policy_loading import load_policy as _load

    return _load(path, device=device, scheduler=scheduler, steps=steps, **kwargs)
