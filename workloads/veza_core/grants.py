"""What each component may do in PostgreSQL: one role per component, granted by the migrations.

The schema owner (the migration Job's URL) creates the tables; a worker connects as its own role and
gets only what its code runs. A stream worker, which decodes untrusted audio, may only declare its
channel in the directory; a chat worker writes its own tables and the directory of rooms; neither
reads or writes `users`, sessions or roles.

Tables are found by migration range (docs/development.md): 0001-0099 belong to the API, 0100-0199 to
chat. What a component needs from another range is listed in ``CROSS_RANGE``. Grants are re-applied
after every migration run, so a table added by a later migration is covered without a new rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import asyncpg

from .db import migration_files

WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")

# Which migration range each component owns the rows of (first two digits of the version / 100).
RANGES: dict[str, range] = {"api": range(1, 100), "chat": range(100, 200)}

# Tables of another component's range a component uses, and how (grep the component's SQL when
# this changes: the tests run each component's flows under its role).
CROSS_RANGE: dict[str, dict[str, tuple[str, ...]]] = {
    "api": {"chat_sanctions": WRITE},  # bans and mutes through REST: one sanctions table
    # A room's workers declare it in the directory (veza_core.directory) and a purge removes it.
    "chat": {"rooms": WRITE},
    "stream": {"channels": ("SELECT", "INSERT", "UPDATE")},  # a channel's workers declare it (announcer)
}

COMPONENTS = ("api", "chat", "stream")  # stream owns no range: it only declares its channel

_CREATE_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)", re.IGNORECASE)
_CREATE_FUNCTION = re.compile(r"CREATE (?:OR REPLACE )?FUNCTION ([a-z_][a-z0-9_]*)", re.IGNORECASE)
_DROP_FUNCTION = re.compile(r"DROP FUNCTION (?:IF EXISTS )?([a-z_][a-z0-9_]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Schema:
    """The tables and functions the migrations create, by component."""

    tables: dict[str, tuple[str, ...]]
    functions: dict[str, tuple[str, ...]]

    @classmethod
    def from_migrations(cls) -> Schema:
        tables: dict[str, list[str]] = {c: [] for c in COMPONENTS}
        functions: dict[str, list[str]] = {c: [] for c in COMPONENTS}
        for version, sql in migration_files():
            owner = next((c for c, numbers in RANGES.items() if int(version[:4]) in numbers), None)
            if owner is None:
                continue
            tables[owner] += _CREATE_TABLE.findall(sql)
            functions[owner] += _CREATE_FUNCTION.findall(sql)
            dropped = set(_DROP_FUNCTION.findall(sql))  # a later migration's function that replaced it is gone
            functions[owner] = [f for f in dict.fromkeys(functions[owner]) if f not in dropped]
        return cls({c: tuple(t) for c, t in tables.items()}, {c: tuple(f) for c, f in functions.items()})


def role_of(url: str) -> str:
    """The user a PostgreSQL URL connects as (what the component's role is called)."""
    user = urlsplit(url).username
    if not user:
        raise ValueError("the component's database URL names no user")
    return unquote(user)


def statements(component: str, role: str, schema: Schema, sequences: Mapping[str, list[str]]) -> list[str]:
    """The SQL that gives `role` exactly what `component` needs (after revoking what it had).

    `sequences`: the sequences each table owns (its bigserial columns), see :func:`owned_sequences`."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
    who = _ident(role)
    every_table = [t for tables in schema.tables.values() for t in tables]
    sql = [f"REVOKE ALL ON TABLE {', '.join(map(_ident, every_table))} FROM {who}"] if every_table else []
    sql.append(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {who}")
    own = schema.tables.get(component, ())
    if own:
        sql.append(f"GRANT {', '.join(WRITE)} ON TABLE {', '.join(map(_ident, own))} TO {who}")
    for table, privileges in CROSS_RANGE.get(component, {}).items():
        sql.append(f"GRANT {', '.join(privileges)} ON TABLE {_ident(table)} TO {who}")
    # bigserial columns: inserting takes the next value of the table's own sequence.
    own_sequences = [s for t in own for s in sequences.get(t, [])]
    if own_sequences:
        sql.append(f"GRANT USAGE, SELECT ON SEQUENCE {', '.join(map(_ident, own_sequences))} TO {who}")
    for function in schema.functions.get(component, ()):
        sql.append(f"GRANT EXECUTE ON FUNCTION {_ident(function)} TO {who}")
    return sql


async def grant(conn: asyncpg.Connection, roles: Mapping[str, str], schema: Schema | None = None) -> None:
    """Apply the grants of every component in `roles` (component -> role name), in one transaction."""
    schema = schema or Schema.from_migrations()
    async with conn.transaction():
        sequences = await owned_sequences(conn)
        for component, role in roles.items():
            for statement in statements(component, role, schema, sequences):
                await conn.execute(statement)


async def owned_sequences(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """table -> the sequences it owns (serial columns) in the public schema."""
    rows = await conn.fetch(
        "SELECT t.relname AS table_name, s.relname AS sequence_name FROM pg_class s"
        " JOIN pg_depend d ON d.objid = s.oid AND d.deptype = 'a'"
        " JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = s.relnamespace"
        " WHERE s.relkind = 'S' AND n.nspname = 'public'")
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], []).append(row["sequence_name"])
    return found


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
