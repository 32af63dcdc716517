"""Stopping a background task whose library loses the cancellation (veza_core.tasks)."""

from __future__ import annotations

import asyncio

from veza_core import tasks


async def _library_call() -> None:
    """Like a timeout helper that reports a cancellation as its own timeout."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise TimeoutError("timed out") from None


async def test_a_retry_loop_ends_when_a_library_turns_its_cancellation_into_an_error() -> None:
    attempts = 0

    async def retrying() -> None:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                await _library_call()
            except Exception as exc:
                tasks.raise_if_cancelled(exc)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(retrying())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert done and task.cancelled() and attempts == 1


async def test_an_error_outside_a_cancellation_is_left_to_the_loop() -> None:
    try:
        raise TimeoutError("a real timeout")
    except TimeoutError as exc:
        tasks.raise_if_cancelled(exc)  # not being cancelled: returns


async def test_stop_cancels_again_a_task_that_lost_the_first_cancellation() -> None:
    lost = 0

    async def loses_one() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # as Python 3.11's wait_for may

    task = asyncio.create_task(loses_one())
    await asyncio.sleep(0)
    assert await tasks.stop(task, wait=0.2)
    assert task.cancelled() and lost == 1


async def test_stop_says_so_when_the_task_will_not_end() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert not await tasks.stop(task, attempts=2, wait=0.05)
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()
