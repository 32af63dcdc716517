"""The `veza` command: one entry point for the operator, every workload and the local platform."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from types import ModuleType

# subcommand -> (module with `add_arguments(parser)` and `run(args) -> int`, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("veza_operator.cli", "run the Kubernetes operator (kopf)"),
    "api": ("veza_api.cli", "run the backend API worker"),
    "chat": ("veza_chat.cli", "run a chat worker for one ChatRoom"),
    "stream": ("veza_stream.cli", "run a stream worker for one StreamChannel"),
    "migrate": ("veza_api.migrate_cli", "apply database migrations"),
    "backup": ("veza_api.backup_cli", "dump the platform's database to its S3 bucket"),
    "restore": ("veza_api.restore_cli", "load a backup from the S3 bucket into a database"),
    "up": ("veza_local.up", "run the whole platform locally from CR YAML files"),
    "crds": ("veza_operator.crds_cli", "print or write the CustomResourceDefinitions"),
    "keys": ("veza_cli.keys", "rotate a platform's JWT signing key, or show its keys"),
}


def _load(name: str) -> ModuleType | None:
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def version() -> str:
    """The installed package's version (the image and the wheel carry the project's metadata)."""
    try:
        return importlib.metadata.version("veza")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected subcommand's module is imported (each pulls in its own heavy
    dependencies: PyAV, boto3, asyncpg, kopf), so `veza operator` does not carry the workers' memory."""
    parser = argparse.ArgumentParser(prog="veza", description=__doc__)
    parser.add_argument("--version", action="version", version=f"veza {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected and (module := _load(name)) is not None:
            module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(selected).parse_args(argv)
    module = _load(args.command)
    if module is None:
        print(f"veza {args.command}: not built yet", file=sys.stderr)
        return 2
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
