"""The `edgedp` command: discovers subcommands in edgedp.commands and turns user errors into one line.

Ctrl-C and SIGTERM at any point outside a running robot loop (parsing, loading and compiling the policy,
validating the config) end the command with one line and exit 130 / 143: nothing has been opened there, so
there is nothing to stop. While `edgedp run` runs, its runtime handles both signals itself and runs the
safe stop (edgedp/runtime/lifecycle.py).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys

from edgedp.errors import UserError
import edgedp.commands as _commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgedp",
        description="Run Diffusion Policy checkpoints on robots: import, compile, run, calibrate.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"edgedp.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _version() -> str:
    from edgedp import __version__

    return f"edgedp {__version__}"


class Terminated(BaseException):
    """SIGTERM outside the runtime: unwinds like Ctrl-C (finally blocks run), reported in one line."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    command = "edgedp"
    previous = None
    if _in_main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = f"edgedp {args.command}"
        try:
            code = args.func(args)
        except UserError as err:
            for line in str(err).splitlines() or ["error"]:
                print(f"{command}: {line}", file=sys.stderr)
            return err.exit_code
        return int(code or 0)
    except KeyboardInterrupt:
        print(f"{command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
