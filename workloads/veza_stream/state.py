"""The application key under which handlers find the worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .worker import Worker

WORKER: web.AppKey[Worker] = web.AppKey("stream_worker")
