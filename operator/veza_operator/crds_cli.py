"""`veza crds`: print the CRDs, or write them into crds/ and the Helm chart."""

from __future__ import annotations

import argparse
from pathlib import Path

from .crds import all_crds, crd_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write", metavar="REPO", nargs="?", const=".", default=None,
                        help="write crds/*.yaml and charts/veza/crds/*.yaml under REPO (default: .)")


def run(args: argparse.Namespace) -> int:
    if args.write is None:
        print("---\n".join(all_crds().values()), end="")
        return 0
    for path, text in crd_files(Path(args.write)).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0
