"""Status conditions (`conditions.py`): the metav1.Condition shape, transition times, kstatus twins."""

from __future__ import annotations

from typing import Any

import pytest

from veza_operator.conditions import Health, conditions, ready_reason, same_status, workers_health


def by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


def test_ready_health_gives_five_conditions_with_their_twins() -> None:
    conds = by_type(conditions(Health(True, "WorkersReady", "2/2 ready."), 3, None))
    assert set(conds) == {"Ready", "Progressing", "Degraded", "Reconciling", "Stalled"}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == (
        "True", "WorkersReady", "2/2 ready.")
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"]) == ("False", "Stable")
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("False", "AsExpected")
    for twin, of in (("Reconciling", "Progressing"), ("Stalled", "Degraded")):
        assert {k: v for k, v in conds[twin].items() if k != "type"} == {
            k: v for k, v in conds[of].items() if k != "type"}
    assert all(c["observedGeneration"] == 3 for c in conds.values())


def test_degraded_and_progressing_carry_the_reason() -> None:
    conds = by_type(conditions(Health(False, "SecretNotFound", "missing", degraded=True), 1, None))
    assert (conds["Ready"]["status"], conds["Degraded"]["status"], conds["Stalled"]["reason"]) == (
        "False", "True", "SecretNotFound")
    conds = by_type(conditions(Health(False, "RollingOut", "1/2", progressing=True), 1, None))
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"]) == ("True", "RollingOut")


def test_progress_of_its_own_while_ready() -> None:
    health = Health(True, "WorkersReady", "ok", progress=("Migrating", "Waiting."))
    conds = by_type(conditions(health, 1, None))
    assert conds["Ready"]["status"] == "True"
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"], conds["Progressing"]["message"]) == (
        "True", "Migrating", "Waiting.")
    assert health.event_type == "Normal"


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    before = conditions(Health(False, "Creating", "c", progressing=True), 1, None)
    for c in before:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    after = by_type(conditions(Health(False, "RollingOut", "r", progressing=True), 2, before))
    assert after["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z", "still False: same transition"
    flipped = by_type(conditions(Health(True, "WorkersReady", "ok"), 2, before))
    assert flipped["Ready"]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert flipped["Degraded"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_same_status_ignores_transition_times_only() -> None:
    conds = conditions(Health(True, "WorkersReady", "ok"), 1, None)
    current = {"observedGeneration": 1, "conditions": [{**c, "lastTransitionTime": "x"} for c in conds],
               "url": "http://a"}
    assert same_status({"observedGeneration": 1, "conditions": conds}, current)
    assert not same_status({"observedGeneration": 2, "conditions": conds}, current)
    assert not same_status({"url": "http://b"}, current)
    assert not same_status({"conditions": conditions(Health(False, "X", "y"), 1, None)}, current)
    assert not same_status({"url": "http://a"}, None)


def test_ready_reason() -> None:
    assert ready_reason(None) is None
    assert ready_reason(conditions(Health(False, "Creating", "c"), 1, None)) == ("False", "Creating")


def deployment(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(("observed", "replicas", "expected"), [
    (None, 1, ("Creating", False, True, False)),
    (deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "slow"}]), 1,
     ("RolloutStuck", False, False, True)),
    (deployment(conditions=[{"type": "ReplicaFailure", "status": "True", "message": "quota"}]), 1,
     ("ReplicaFailure", False, False, True)),
    (deployment(2, observedGeneration=1, readyReplicas=1, updatedReplicas=1), 1, ("RollingOut", False, True, False)),
    (deployment(observedGeneration=1, readyReplicas=1, updatedReplicas=2), 2, ("RollingOut", False, True, False)),
    (deployment(observedGeneration=1), 0, ("ScaledToZero", True, False, False)),
    (deployment(observedGeneration=1, readyReplicas=2, updatedReplicas=2), 2, ("WorkersReady", True, False, False)),
])
def test_workers_health(observed: dict[str, Any] | None, replicas: int, expected: tuple[str, bool, bool, bool]) -> None:
    health = workers_health(observed, replicas, "chat worker")
    assert (health.reason, health.ready, health.progressing, health.degraded) == expected
    assert health.event_type == ("Warning" if health.degraded else "Normal")


@pytest.mark.parametrize("observed", [
    deployment(2, observedGeneration=1, readyReplicas=3, updatedReplicas=3),
    deployment(observedGeneration=1, readyReplicas=3, updatedReplicas=1),
    deployment(observedGeneration=1, readyReplicas=1, updatedReplicas=3),
])
def test_a_rollout_message_never_says_all_replicas_are_ready(observed: dict[str, Any]) -> None:
    health = workers_health(observed, 3, "chat worker")
    assert (health.ready, health.reason) == (False, "RollingOut")
    assert "3/3 chat worker replicas ready" not in health.message, health.message
