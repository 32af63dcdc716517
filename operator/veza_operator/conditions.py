"""Status conditions in the metav1.Condition shape (what kstatus, Argo CD and Flux read).

Ready, Progressing and Degraded follow the Kubernetes API conventions; Reconciling and
Stalled mirror Progressing and Degraded under the names kstatus (Flux, `kubectl wait`
through cli-utils) reads as "abnormal-true" conditions, so GitOps tools see a stuck
resource as failed without custom health checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
RECONCILING, STALLED = "Reconciling", "Stalled"


@dataclass(frozen=True)
class Health:
    """The outcome of one reconcile, reduced to what the conditions say."""

    ready: bool
    reason: str  # CamelCase
    message: str
    progressing: bool = False
    degraded: bool = False
    # Progressing's own (reason, message) when it differs from Ready's: a platform serving its
    # running version (Ready=True, WorkersReady) while the next one migrates (Progressing=True, Migrating).
    progress: tuple[str, str] | None = None

    @property
    def event_type(self) -> str:
        return "Normal" if self.ready or self.progressing else "Warning"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(health: Health, generation: int, previous: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Ready/Progressing/Degraded; a condition keeps its lastTransitionTime while its status holds."""
    before = {c.get("type"): c for c in previous or []}
    in_progress = health.progressing or health.progress is not None
    progressing = (health.progress or (health.reason, health.message)) if in_progress \
        else ("Stable", "Nothing to roll out.")
    degraded = (health.reason, health.message) if health.degraded else ("AsExpected", "No problem found.")
    wanted = [
        (READY, health.ready, health.reason, health.message),
        (PROGRESSING, in_progress, *progressing),
        (DEGRADED, health.degraded, *degraded),
        (RECONCILING, in_progress, *progressing),
        (STALLED, health.degraded, *degraded),
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


def workers_health(deployment: dict[str, Any] | None, replicas: int, what: str) -> Health:
    """Health of a worker Deployment as the room, channel or platform should report it."""
    if deployment is None:
        return Health(False, "Creating", f"Creating the {what} Deployment.", progressing=True)
    status = deployment.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Health(False, "RolloutStuck", f"{what} rollout is stuck: {cond.get('message', '')}",
                          degraded=True)
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return Health(False, "ReplicaFailure", f"{what} pods cannot be created: {cond.get('message', '')}",
                          degraded=True)
    generation = deployment["metadata"].get("generation", 0)
    ready = status.get("readyReplicas", 0)
    updated = status.get("updatedReplicas", 0)
    if status.get("observedGeneration", 0) < generation:
        return Health(False, "RollingOut", f"The {what} Deployment has a new spec to roll out.", progressing=True)
    if updated < replicas:
        return Health(False, "RollingOut", f"{updated}/{replicas} {what} replicas updated, {ready} ready.",
                      progressing=True)
    if ready < replicas:
        return Health(False, "RollingOut", f"{ready}/{replicas} {what} replicas ready.", progressing=True)
    if replicas == 0:
        return Health(True, "ScaledToZero", f"{what} is scaled to zero replicas.")
    return Health(True, "WorkersReady", f"{ready}/{replicas} {what} replicas ready.")


def name_conflict(conflicts: list[str], kind: str) -> Health:
    """Objects of someone else hold the names of children: they are left alone, never taken over."""
    return Health(False, "NameConflict", f"{', '.join(conflicts)} exist(s) and were not created for this {kind}: "
                                         f"the operator does not take them over. Delete or rename them (or label "
                                         f"them veza.io/usable-by=<platform> to hand them over).", degraded=True)
