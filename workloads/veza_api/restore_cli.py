"""`veza restore`: a backup of `veza backup` back into a database (see backup_cli)."""

from .backup_cli import add_restore_arguments as add_arguments
from .backup_cli import run_restore as run

__all__ = ["add_arguments", "run"]
