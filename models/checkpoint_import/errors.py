"""Error types of checkpoint import.

`models/` must not import `edgedp`, so the importers raise these ValueError subclasses and the
CLI layer turns them into one-line user errors.  Every message names the file (and, where it
matters, the key or class) so the user knows what to fix without a traceback.
"""
from __future__ import annotations

import functools
import reprlib
from typing import Any, Callable, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

# A repr that stops after a few levels and items: a value from a hostile file may be a list that
# contains itself 2**40 times through shared references, and a plain repr() would never finish.
class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int over 4300 digits raises; its size is what matters in a message anyway
        return reprlib.Repr.repr_int(self, x, level) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"


_REPR = _ShortRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 40, 40, 40


def short_repr(value: Any) -> str:
    """At most a few dozen characters of `value`, in bounded time whatever its shape."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that raises must not hide the real error
        return f"<{type(value).__name__}>"


class CheckpointError(ValueError):
    """The file is not a checkpoint we can read: damaged, wrong type, or refused for safety."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the allow-list; we refuse rather than run its code."""


class UnsupportedCheckpointError(CheckpointError):
    """A well-formed checkpoint whose architecture/option we do not implement (named in the message)."""


def one_line_errors(source_arg: int = 0) -> Callable[[_F], _F]:
    """Turn any stray TypeError/KeyError/IndexError/... from interpreting a damaged file into one
    CheckpointError naming the file, so no hostile value can end in a traceback. The specific
    checks come first; this is the net under them."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except CheckpointError:
                raise
            except RecursionError:
                raise CheckpointError(f"{args[source_arg]}: nests too deeply (damaged file?)") from None
            except MemoryError:
                raise CheckpointError(f"{args[source_arg]}: needs more memory than available (damaged file?)") from None
            except (TypeError, KeyError, IndexError, AttributeError, ValueError, OverflowError, ZeroDivisionError) as err:
                text = str(err).splitlines()[0][:160] if str(err) else ""
                raise CheckpointError(f"{args[source_arg]}: malformed checkpoint ({type(err).__name__}: {text})") from None

        return inner  # type: ignore[return-value]

    return wrap
