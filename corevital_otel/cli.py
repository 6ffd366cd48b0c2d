"""``corevital-otel`` command line: one sub-command per module in ``corevital_otel.commands``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import commands
from .version import __version__


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 2 (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Only the standard library and the command modules' argument definitions: torch and transformers
    # are imported by a command's run(), so --help and argument errors come back at once.
    parser = OneLineErrorParser(prog="corevital-otel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"corevital-otel {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
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
