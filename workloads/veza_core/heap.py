"""The cyclic garbage collector of a worker that holds thousands of long-lived connections.

CPython collects its oldest generation (a full collection: it walks every tracked object the process holds) after
every ten collections of the middle one, once a quarter of what it holds is new since the last. A chat socket is
~75 tracked objects (its handler's coroutines, task, request, parser, timers) that live as long as the socket: while
5,000 sockets connected to one worker a full collection came every ~730 sockets, each walking all those before it
(28 ms at the first, 410 ms at the seventh on a 2-vCPU machine), so a connect ramp stopped the loop for 1.3 s in
all, and a hot room's deliveries for up to half a second at a time (`bench/hot_room_bench.py`, docs/chat-protocol.md).
With `FULL_COLLECTION_EVERY` middle collections between two full ones (~700,000 container allocations that outlived
a young collection) the same ramp needs none; the quarter rule still holds, so a heap that stops growing is fully
collected as rarely as before, and cyclic garbage (a closed socket's ~45 objects) waits longer in the oldest
generation: memory, not pauses. Every pause is measured: `veza_gc_pause_seconds{generation}`.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from veza_core import metrics

FULL_COLLECTION_EVERY = 100  # collections of the middle generation between two full ones (CPython's default: 10)

_settled = False
_started = 0.0


def settle_heap() -> None:
    """Once per process, when it is ready to serve: move what booting allocated (modules, clients, pools) out of
    the collector's reach (a full collection over that heap stopped a worker's loop for 30-160 ms about once a second
    under load; afterwards it walks only what was allocated since), space full collections out (above) and measure
    every pause."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    for generation in range(3):  # exported from the start, at zero
        metrics.gc_pause(generation)
    gc.callbacks.append(_measure_pause)


def _measure_pause(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        metrics.gc_pause(info["generation"]).observe(time.perf_counter() - _started)
