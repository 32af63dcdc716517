"""Runs one `veza` subcommand in a worker process: `python -m veza_local.launch chat`.

The same module, arguments and `run(args)` as the `veza` console script (its
COMMANDS table), without importing every other subcommand first, which costs
about a second of CPU per process; `veza up` starts several at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from veza_cli.main import COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m veza_local.launch {{{','.join(COMMANDS)}}} [args]", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"veza {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command = name
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
