"""Errors a user can fix: the CLI prints them as one line and exits non-zero, never a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, path, device) with the exit code the CLI should return."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(UserError):
    """The run config is invalid; `problems` holds one line per mistake, each naming the field path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems), exit_code=2)


def one_line(exc: BaseException) -> str:
    """An exception's message as one line (its lines joined by "; "; the type's name when it has none): what a
    user error, a results row or a log line shows instead of a traceback."""
    return "; ".join(s.strip() for s in str(exc).splitlines() if s.strip()) or type(exc).__name__
