"""``corevital-otel`` command line: one sub-command per module in ``corevital_otel.commands``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import commands
from .version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corevital-otel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"corevital-otel {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each module defines register(subcommands), adding a parser whose default `run` takes the namespace.
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not module_info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{module_info.name}").register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if not getattr(arguments, "run", None):
        parser.print_help()
        return 2
    return int(arguments.run(arguments) or 0)


if __name__ == "__main__":
    sys.exit(main())
