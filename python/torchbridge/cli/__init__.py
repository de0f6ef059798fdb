"""The ``torchbridge`` command line.

Each group of subcommands lives in its own module with a ``register(subparsers)``
function that adds its parsers and sets ``func`` (``func(args) -> int``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# modules that contribute subcommands, in the order ``--help`` lists them
_COMMAND_MODULES = (
    "torchbridge.cli.registry_commands",  # list, search, info, doctor
    "torchbridge.cli.export_command",  # export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchbridge",
        description="Find, inspect, load and export the Python ecosystem's pretrained models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
