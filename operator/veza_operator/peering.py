"""Follow kopf's peering: a replica paused in favour of another must not reconcile.

kopf stops delivering watch events to a replica that sees a live peer of higher priority, but
the reconcile queue, its retries and the resync loop are ours: left alone they would carry on
from a store that no longer changes, and a standby would write stale state over the active
replica's work. kopf offers no hook for pausing; its peering engine announces every change on
its logger, which is what we follow (the messages of the locked kopf version;
tests/operator/test_peering.py fails if they change).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

PEERING_LOGGER = "kopf._core.engines.peering"
# "Pausing operations in favour of [...]" and "Pausing all operators, including self: [...]".
PAUSING = "Pausing "
RESUMING = "Resuming operations"


class PauseFollower(logging.Handler):
    """Calls `on_pause` / `on_resume` as kopf pauses and resumes this replica.

    kopf logs from the event loop's thread just before it toggles, so the callbacks run in the
    loop, before any watch stream reacts to the change.
    """

    def __init__(self, on_pause: Callable[[], None], on_resume: Callable[[], None]) -> None:
        super().__init__(logging.INFO)
        self.on_pause = on_pause
        self.on_resume = on_resume

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(PAUSING):
            self.on_pause()
        elif message.startswith(RESUMING):
            self.on_resume()

    def attach(self) -> None:
        logger = logging.getLogger(PEERING_LOGGER)
        # kopf's loggers are quieted to WARNING; a pause or resume is worth a line anyway.
        logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def detach(self) -> None:
        logging.getLogger(PEERING_LOGGER).removeHandler(self)
