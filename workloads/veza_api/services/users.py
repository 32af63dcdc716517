"""The account record: lookups, creation, and its JSON shape."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

USER_COLUMNS = "id, email, display_name, roles, disabled, created_at, email_verified_at"


def user_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": str(row["id"]), "email": row["email"], "display_name": row["display_name"],
            "roles": list(row["roles"]), "disabled": row["disabled"], "created_at": row["created_at"].isoformat(),
            "email_verified": row["email_verified_at"] is not None}


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def find_by_email(db: asyncpg.Pool | asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await db.fetchrow(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1",  # noqa: S608
                             normalise_email(email))


async def find_by_id(db: asyncpg.Pool | asyncpg.Connection, uid: uuid.UUID) -> asyncpg.Record | None:
    return await db.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", uid)  # noqa: S608


async def create_user(db: asyncpg.Pool | asyncpg.Connection, *, email: str, display_name: str,
                      password_hash: str | None, verified: bool) -> asyncpg.Record | None:
    """The new user (no roles), or None when the email is taken. `verified`: the login creating it proved
    the address."""
    sql = ("INSERT INTO users (email, display_name, password_hash, email_verified_at)"
           " VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END) ON CONFLICT (email) DO NOTHING RETURNING ")
    return await db.fetchrow(sql + USER_COLUMNS, normalise_email(email), display_name, password_hash, verified)
