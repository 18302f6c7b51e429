"""One place that decides how wide tables are, so piped output (logs, CI) is not truncated to 80 columns."""
from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=160, soft_wrap=True)
