"""Reads that may lag, served by a PostgreSQL streaming replica when it is fresh enough.

A :class:`ReadRouter` sits beside the primary pool. Each read it is given goes to the replica only when

- the replica answers (a :class:`~veza_core.breaker.CircuitBreaker` sends reads to the primary at once while it
  does not, and lets a trial read through by itself a little later),
- its replay lag is within the bound (``VEZA_DATABASE_READ_MAX_LAG_SECONDS``), and
- it has replayed past the primary's WAL position taken after the newest write this process made or was told
  of (:meth:`ReadRouter.wrote`): a client reads its own writes.

Anything else reads the primary. Lag is measured in LSNs, not timestamps: a monitor samples the primary's
``pg_current_wal_lsn()`` and the replica's ``pg_last_wal_replay_lsn()``; the lag is the age of the newest primary
sample the replica has replayed past, zero once it has replayed everything the primary had written. An idle
primary (whose ``pg_last_xact_replay_timestamp()`` only grows older) is therefore not mistaken for a late replica.

Without a read endpoint the router hands every read to the primary pool: no extra pool, no extra query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .breaker import CircuitBreaker
from .db import create_pool
from .metrics import DB_READS, DB_REPLICA_LAG, DEPENDENCY_UP

log = logging.getLogger(__name__)
T = TypeVar("T")

REPLAY_LSN = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
# Taken after a write committed: at or past its commit record, whether or not that record is flushed yet.
WRITE_LSN = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
PRIMARY_LSN = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
# A replica that does not answer is given up on quickly: the primary serves meanwhile.
REPLICA_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
NEVER = 2**63 - 1  # an LSN no replica has replayed


def read_url(database_url: str | None, read_url: str | None, read_host: str | None) -> str | None:
    """The read endpoint's URI: `read_url` as given, else `database_url` with its host (and port, when
    `read_host` names one) replaced by `read_host` (same credentials and database: CloudNativePG's `-ro`)."""
    if read_url:
        return read_url
    if not read_host or not database_url:
        return None
    parts = urlsplit(database_url)
    userinfo = parts.netloc.rpartition("@")[0]
    host = read_host if ":" in read_host or parts.port is None else f"{read_host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}" if userinfo else host))


class ReadRouter:
    """Routes reads between the primary pool and a replica pool (see the module's docstring)."""

    def __init__(self, primary: asyncpg.Pool, replica_url: str | None = None, *, max_lag: float = 5.0,
                 component: str = "worker", interval: float | None = None, max_size: int = 8) -> None:
        self.primary = primary
        self.replica_url = replica_url
        self.max_lag = max_lag
        self.component = component
        self.interval = interval if interval is not None else min(1.0, max(0.05, max_lag / 5))
        self.max_size = max_size
        self.replica: asyncpg.Pool | None = None
        # Made only with a replica: its gauge (veza_circuit_open{name="db-replica"}) is exported from then on.
        self.breaker = CircuitBreaker("db-replica", failure_threshold=1, reset_after=2.0,
                                      errors=REPLICA_ERRORS) if replica_url is not None else None
        self.up = False  # the monitor's last look at the replica succeeded
        self.replayed = 0  # the replica's replay LSN, as last seen (it only grows)
        self.lag = float("inf")
        self.need = 0  # the primary's LSN after the newest write known here
        self._unsynced = False  # a write happened since `need` was taken
        self._sync: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[int] | None = None
        self._samples: deque[tuple[float, int]] = deque()  # (monotonic time, primary LSN)
        self._monitor: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.replica_url is not None

    async def start(self) -> None:
        if self.replica_url is None:
            return
        # min_size=0: a replica down at start does not stop the worker; connections are made on first use.
        self.replica = await create_pool(self.replica_url, min_size=0, max_size=self.max_size, timeout=2.0,
                                         command_timeout=5.0)
        await self._look()
        self._monitor = asyncio.create_task(self._watch(), name="db-replica-monitor")

    async def close(self) -> None:
        for task in (self._monitor, self._sync, self._recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.replica is not None:
            try:
                await asyncio.wait_for(self.replica.close(), 2.0)
            except TimeoutError:
                self.replica.terminate()

    # -- writes ------------------------------------------------------------------
    def wrote(self) -> None:
        """A write committed (here, or elsewhere and announced here): later reads must see it."""
        if self.enabled:
            self._unsynced = True

    async def _needed(self) -> int:
        """The LSN a read must find replayed: the primary's, taken after the newest write known here. Reads
        that start while a fetch of it is under way share that fetch (it began after their writes)."""
        if self._unsynced:
            self._unsynced = False
            self._sync = asyncio.create_task(self._fetch_need())
        if self._sync is not None:
            try:
                await asyncio.shield(self._sync)
            except Exception:
                self._unsynced = True  # the primary did not answer: the next read asks again
                return NEVER
        return self.need

    async def _fetch_need(self) -> None:
        lsn = await self.primary.fetchval(WRITE_LSN)
        self.need = max(self.need, int(lsn))

    # -- reads -------------------------------------------------------------------
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self.run(lambda pool: pool.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self.run(lambda pool: pool.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.run(lambda pool: pool.fetchval(query, *args))

    async def run(self, read: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """`read` on the replica when it may serve it, else on the primary."""
        if self.replica is None or self.breaker is None:
            return await read(self.primary)
        refusal = await self._refusal(self.breaker)
        if refusal is not None:
            return await self.on_primary(read, refusal)
        replica, breaker = self.replica, self.breaker
        failed = False

        async def on_replica() -> T:
            nonlocal failed
            try:
                return await read(replica)
            except REPLICA_ERRORS:
                failed = True
                raise

        async def fallback() -> T:
            return await self.on_primary(read, "error" if failed else "down")

        result = await breaker.call(on_replica, fallback)
        if not failed and not breaker.is_open:
            DB_READS.labels("replica", "fresh").inc()
        return result

    async def on_primary(self, read: Callable[[asyncpg.Pool], Awaitable[T]], reason: str) -> T:
        """`read` on the primary, counted under `reason` (callers that must read the primary say why)."""
        if self.replica is not None:
            DB_READS.labels("primary", reason).inc()
        return await read(self.primary)

    async def _refusal(self, breaker: CircuitBreaker) -> str | None:
        """Why the replica may not serve a read now (None: it may)."""
        if not self.up or breaker.is_open:
            return "down"
        if self.lag > self.max_lag:
            return "lagging"
        need = await self._needed()
        if self.replayed >= need:
            return None
        # Behind the monitor's last look: ask the replica itself (one query shared by concurrent reads).
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self._replayed_now(breaker))
        replayed = await asyncio.shield(self._recheck)
        if replayed < 0:
            return "down"
        return None if replayed >= need else "behind"

    async def _replayed_now(self, breaker: CircuitBreaker) -> int:

        async def look() -> int:
            assert self.replica is not None
            lsn = await self.replica.fetchval(REPLAY_LSN)
            if lsn is None:
                raise asyncpg.InterfaceError("the read endpoint is not a replica in recovery")
            self.replayed = max(self.replayed, int(lsn))
            return self.replayed

        async def unknown() -> int:
            return -1

        return await breaker.call(look, unknown)

    # -- the monitor ------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._look()

    async def _look(self) -> None:
        """One sample: the primary's LSN, then the replica's replay LSN, and the lag they imply."""
        assert self.replica is not None
        now = time.monotonic()
        try:
            primary = int(await self.primary.fetchval(PRIMARY_LSN))
        except Exception:
            return  # the primary's own troubles are not the replica's (its reads fail and say so)
        self._samples.append((now, primary))
        horizon = now - 2 * self.max_lag - 4 * self.interval
        while len(self._samples) > 1 and self._samples[1][0] < horizon:
            self._samples.popleft()
        try:
            lsn = await self.replica.fetchval(REPLAY_LSN)
            if lsn is None:
                raise asyncpg.InterfaceError("the read endpoint is not a replica in recovery")
        except Exception as exc:
            if self.up:
                log.warning("read replica unavailable", extra={"error": repr(exc)})
            self.up = False
            DEPENDENCY_UP.labels(self.component, "postgres-replica").set(0)
            return
        if not self.up:
            log.info("read replica available", extra={"replay_lsn": int(lsn)})
        self.up = True
        DEPENDENCY_UP.labels(self.component, "postgres-replica").set(1)
        self.replayed = max(self.replayed, int(lsn))
        self.lag = self._lag_of(self.replayed, now)
        DB_REPLICA_LAG.set(self.lag)

    def _lag_of(self, replayed: int, now: float) -> float:
        """How old the newest primary position the replica has replayed is (0: it has everything)."""
        newest_seen = None
        for at, lsn in reversed(self._samples):
            if lsn <= replayed:
                newest_seen = at
                break
        if newest_seen is None:  # behind every sample kept: at least as old as the oldest
            return now - self._samples[0][0] + self.interval
        if newest_seen == self._samples[-1][0]:
            return 0.0
        return now - newest_seen
