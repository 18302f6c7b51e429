"""CLI subcommands. Each module here defines `register(subparsers)`; cli.py discovers them.

One module per command keeps the commands independent: adding a command never edits cli.py.
A module's `register` adds a parser and sets `func=handler` where `handler(args) -> int`.
"""
