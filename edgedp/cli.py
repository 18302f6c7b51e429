"""The `edgedp` command: discovers subcommands in edgedp.commands and turns user errors into one line."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except UserError as err:
        for line in str(err).splitlines() or ["error"]:
            print(f"edgedp {args.command}: {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edgedp {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
