"""Import checkpoints from LeRobot and the original Diffusion Policy into the native format.

Nothing here executes code from a checkpoint: `.ckpt` pickles go through a restricted
unpickler (`safe_unpickle`, `torch_zip`), LeRobot weights are safetensors and JSON.
"""
from __future__ import annotations

from .errors import CheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError
from .torch_zip import load_torch_zip

__all__ = ["CheckpointError", "UnsafeCheckpointError", "UnsupportedCheckpointError", "load_torch_zip"]
