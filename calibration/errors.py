"""The calibration package's own error type (it must not import edgedp, which maps it to a one-line exit)."""
from __future__ import annotations


class CalibrationError(Exception):
    """Input a user can fix (bad file, board never seen, degenerate motion); the CLI prints it as one line."""
