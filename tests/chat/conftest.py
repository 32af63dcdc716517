"""Chat fixtures: rooms served by real worker processes (or in-process workers) against real
services. The helpers they hand out (Chat, ChatClient, ...) live in tests/support/chat.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.chat import ISSUER, Chat
from veza_core.auth import TokenIssuer
from veza_core.keys import KeySet, generate_signing_key, secret_data


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TokenIssuer]:
    directory = tmp_path_factory.mktemp("jwt")
    key = generate_signing_key()
    for name, content in secret_data([key]).items():
        (directory / name).write_text(content)
    return directory, TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER)


@pytest.fixture
async def chat_factory(tmp_path: Path, jwt_keys: tuple[Path, TokenIssuer]) -> AsyncIterator[Callable[..., Chat]]:
    """Rooms on services the test chooses (private instances it may stop or kill)."""
    made: list[Chat] = []

    def make(**services: str) -> Chat:
        chat = Chat(tmp_path, jwt_keys[0], jwt_keys[1], services)
        made.append(chat)
        return chat

    yield make
    for chat in made:
        await chat.close()


@pytest.fixture
async def chat(chat_factory: Callable[..., Chat], postgres: Any, nats: Any, redis: Any) -> Chat:
    """A fresh room on the shared services."""
    return chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_NATS_URL=nats.url, VEZA_REDIS_URL=redis.url)
