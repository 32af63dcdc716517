"""Settings of `veza up`: read from the environment once, in `up.run`, and passed down.

The command line says almost everything; the environment adds the data dir's default
(`VEZA_DATA_DIR`), whether progress lines may be coloured (`NO_COLOR`, https://no-color.org)
and the environment the workers start from (`PATH`, `HOME`...; the wiring's variables go over it).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class UpSettings(BaseModel):
    """Every knob of `veza up`, with the flag or environment variable that sets it."""

    model_config = ConfigDict(frozen=True)

    files: tuple[Path, ...] = Field((Path("examples"),), description="-f: CR files or directories")
    data_dir: Path = Field(Path(".veza"), description="--data-dir, else VEZA_DATA_DIR")
    reset: bool = Field(False, description="--reset: wipe the data dir first")
    host: str = Field("127.0.0.1", description="--host: the entry point's address")
    port: int = Field(8000, description="--port: the entry point's port")
    platform: str | None = Field(None, description="--platform: the VezaPlatform to run")
    no_redis: bool = Field(False, description="--no-redis")
    check: bool = Field(False, description="--check: validate the files and exit")
    color: bool = Field(True, description="progress lines may be coloured (a terminal, and NO_COLOR unset)")
    environ: dict[str, str] = Field(default_factory=dict, description="the environment workers start from")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpSettings:
        values: dict[str, object] = {"color": env.get("NO_COLOR") is None, "environ": dict(env)}
        if "VEZA_DATA_DIR" in env:
            values["data_dir"] = Path(env["VEZA_DATA_DIR"])
        return cls.model_validate(values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> UpSettings:
        """The environment's settings with the command line's applied (flags left unset keep them)."""
        base = cls.from_env(env)
        return base.model_copy(update={
            "files": tuple(args.filename) if args.filename else base.files,
            # Resolved once: the lock, the services and the workers' environment all name the same directory.
            "data_dir": (args.data_dir or base.data_dir).resolve(),
            "reset": args.reset, "host": args.host, "port": args.port, "platform": args.platform,
            "no_redis": args.no_redis, "check": args.check,
        })
