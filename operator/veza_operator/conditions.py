"""Status conditions in the metav1.Condition shape (what kstatus, Argo CD and Flux read)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"


@dataclass(frozen=True)
class Health:
    """The outcome of one reconcile, reduced to what the conditions say."""

    ready: bool
    reason: str  # CamelCase
    message: str
    progressing: bool = False
    degraded: bool = False


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(health: Health, generation: int, previous: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Ready/Progressing/Degraded; a condition keeps its lastTransitionTime while its status holds."""
    before = {c.get("type"): c for c in previous or []}
    wanted = [
        (READY, health.ready, health.reason, health.message),
        (PROGRESSING, health.progressing, health.reason if health.progressing else "Stable",
         health.message if health.progressing else "Nothing to roll out."),
        (DEGRADED, health.degraded, health.reason if health.degraded else "AsExpected",
         health.message if health.degraded else "No problem found."),
    ]
    out = []
    for kind, flag, reason, message in wanted:
        status = "True" if flag else "False"
        old = before.get(kind)
        since = old["lastTransitionTime"] if old and old.get("status") == status else now()
        out.append({"type": kind, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": since, "observedGeneration": generation})
    return out


def same_status(desired: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether a status patch would change nothing (transition times aside)."""
    current = current or {}
    for key, value in desired.items():
        if key == "conditions":
            strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
            have = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in current.get(key) or []]
            if strip != have:
                return False
        elif current.get(key) != value:
            return False
    return True


def ready_reason(conds: list[dict[str, Any]] | None) -> tuple[str, str] | None:
    for c in conds or []:
        if c.get("type") == READY:
            return c.get("status", "Unknown"), c.get("reason", "")
    return None
