"""Error types of checkpoint import.

`models/` must not import `edgedp`, so the importers raise these ValueError subclasses and the
CLI layer turns them into one-line user errors.  Every message names the file (and, where it
matters, the key or class) so the user knows what to fix without a traceback.
"""
from __future__ import annotations


class CheckpointError(ValueError):
    """The file is not a checkpoint we can read: damaged, wrong type, or refused for safety."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the allow-list; we refuse rather than run its code."""


class UnsupportedCheckpointError(CheckpointError):
    """A well-formed checkpoint whose architecture/option we do not implement (named in the message)."""
