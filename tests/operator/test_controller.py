"""The reconcile queue alone (`controller.Reconciler`): no API server, reconcile functions that record."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

from tests.support.waiting import wait_for
from veza_operator.controller import Context, Key, ReconcileFn, Reconciler, Store
from veza_operator.kube import ApiError

ROOM: Key = ("ChatRoom", "ns", "general")


def reconciler_of(handler: ReconcileFn, *, workers: int = 2, max_backoff: float = 60.0) -> Reconciler:
    return Reconciler(Context(client=None, store=Store()), {"ChatRoom": handler},  # type: ignore[arg-type]
                      workers=workers, max_backoff=max_backoff)


async def idle(reconciler: Reconciler) -> None:
    await wait_for(lambda: not (reconciler.pending or reconciler.running or reconciler.again), timeout=5,
                   message="the queue drained")


async def test_repeated_requests_of_a_waiting_resource_run_once() -> None:
    runs: list[Key] = []

    async def record(ctx: Context, key: Key) -> None:
        runs.append(key)

    reconciler = reconciler_of(record)
    for _ in range(5):
        reconciler.request(ROOM)
    reconciler.request(("Unknown", "ns", "x"))  # no reconcile function: ignored
    assert reconciler.pending == {ROOM} and reconciler.queue.qsize() == 1
    reconciler.start()
    try:
        await wait_for(lambda: runs, timeout=5, message="the reconcile ran")
        await idle(reconciler)
    finally:
        await reconciler.stop()
    assert runs == [ROOM]


async def test_a_request_while_running_runs_once_more_afterwards_never_at_the_same_time() -> None:
    release = asyncio.Event()
    runs: list[str] = []
    concurrent = 0

    async def slow(ctx: Context, key: Key) -> None:
        nonlocal concurrent
        concurrent += 1
        assert concurrent == 1, "two reconciles of one resource at once"
        runs.append("start")
        await release.wait()
        concurrent -= 1

    reconciler = reconciler_of(slow, workers=4)
    reconciler.start()
    try:
        reconciler.request(ROOM)
        await wait_for(lambda: ROOM in reconciler.running, timeout=5, message="the first run started")
        for _ in range(3):
            reconciler.request(ROOM)
        assert reconciler.again == {ROOM} and not reconciler.pending
        release.set()
        await wait_for(lambda: len(runs) == 2, timeout=5, message="one more run")
        await idle(reconciler)
    finally:
        await reconciler.stop()
    assert runs == ["start", "start"]


async def test_failures_are_retried_with_growing_backoff_and_forgotten_on_success() -> None:
    runs: list[float] = []

    async def flaky(ctx: Context, key: Key) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise RuntimeError("the API server is away")

    reconciler = reconciler_of(flaky)
    reconciler.start()
    try:
        reconciler.request(ROOM)
        await wait_for(lambda: len(runs) == 3, timeout=5, message="two retries")
        await idle(reconciler)
    finally:
        await reconciler.stop()
    first, second = runs[1] - runs[0], runs[2] - runs[1]
    assert 0.45 <= first < second and second >= 0.95, (first, second)  # 0.5 s, then 1 s
    assert reconciler.failures == {} and not reconciler.due


async def test_backoff_is_capped() -> None:
    runs: list[float] = []

    async def failing(ctx: Context, key: Key) -> None:
        runs.append(time.monotonic())
        raise RuntimeError("still away")

    reconciler = reconciler_of(failing, max_backoff=0.1)
    reconciler.start()
    try:
        reconciler.request(ROOM)
        await wait_for(lambda: len(runs) >= 4, timeout=5, message="retries at the cap")
    finally:
        await reconciler.stop()
    assert max(b - a for a, b in pairwise(runs)) < 0.5


async def test_a_namespace_being_terminated_is_not_retried() -> None:
    runs: list[Key] = []

    async def forbidden(ctx: Context, key: Key) -> None:
        runs.append(key)
        raise ApiError(403, 'unable to create new content in namespace ns because it is being terminated')

    reconciler = reconciler_of(forbidden)
    reconciler.start()
    try:
        reconciler.request(ROOM)
        await wait_for(lambda: runs, timeout=5, message="the reconcile ran")
        await idle(reconciler)
    finally:
        await reconciler.stop()
    assert runs == [ROOM] and not reconciler.due and reconciler.failures == {}


async def test_pausing_forgets_failures_and_delayed_retries() -> None:
    runs: list[Key] = []

    async def failing(ctx: Context, key: Key) -> None:
        runs.append(key)
        raise RuntimeError("away")

    reconciler = reconciler_of(failing)
    reconciler.start()
    try:
        reconciler.request(ROOM)
        await wait_for(lambda: reconciler.due, timeout=5, message="a retry scheduled")
        reconciler.pause()
        assert not reconciler.due and reconciler.failures == {} and not reconciler.pending
        reconciler.request(ROOM)
        assert not reconciler.pending, "a paused reconciler takes no requests"
        await asyncio.sleep(0.7)  # the point: the retry that was due after 0.5 s does not run
        assert runs == [ROOM]
    finally:
        await reconciler.stop()
