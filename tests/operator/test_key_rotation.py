"""Signing-key rotation: the schedule's stages as pure functions, then the operator carrying them out
on a real API server (through `veza keys`), resuming after a restart, and the spec's overlap rule."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.kube import KubeCluster
from tests.support.operator import (
    OPERATOR_USER,
    OperatorProcess,
    connections_secret,
    platform,
    quiet,
    resync_rounds,
    writes_by,
)
from veza_core.keys import ROTATE_ANNOTATION, SCHEDULE_ANNOTATION, generate_signing_key
from veza_local.controlplane import wait_for
from veza_operator import keys
from veza_operator.models import VezaPlatformSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = keys.Timing(period=timedelta(seconds=100), overlap=timedelta(seconds=60),
                     propagation=timedelta(seconds=10))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Keys:
    """A Secret's keys and schedule carried from one `advance` to the next, as the operator does."""

    def __init__(self) -> None:
        ids = count(1)
        self.generate = lambda: generate_signing_key(f"k{next(ids)}")
        first = self.generate()
        self.schedule = keys.Schedule((keys.KeyTimes(first["kid"], T0, T0),))
        self.private = [first]

    def advance(self, seconds: float, request: str | None = None) -> list[str]:
        step = keys.advance(self.schedule, self.private, TIMING, at(seconds), request=request,
                            generate=self.generate)
        # Through the annotation and back, as a restarted operator reads it.
        self.schedule = keys.Schedule.from_json(step.schedule.to_json())
        self.private = step.private_keys
        return [s.reason for s in step.stages]

    @property
    def order(self) -> list[str]:
        return [k["kid"] for k in self.private]


def test_a_period_publishes_then_activates_then_retires() -> None:
    ring = Keys()
    assert ring.advance(99) == [] and ring.order == ["k1"]
    assert ring.advance(100) == ["KeyPublished"]
    assert ring.order == ["k1", "k2"]  # k2 verifies (jwks.json) but k1 still signs
    assert ring.advance(109) == []
    assert ring.advance(110) == ["KeyActivated"] and ring.order == ["k2", "k1"]
    # k1 verifies for the propagation (replicas still signing with it) plus the overlap.
    assert ring.advance(179) == [] and ring.order == ["k2", "k1"]
    assert ring.advance(180) == ["KeyRetired"] and ring.order == ["k2"]
    status = keys.key_status(ring.schedule, TIMING, at(180))
    assert status["active"] == "k2" and status["nextRotation"] == keys.stamp(at(210))


def test_a_late_step_catches_up_on_every_stage_due() -> None:
    ring = Keys()
    ring.advance(100)
    # The operator was down from 100 s to 500 s: k2 signs, k1 left, and k3 is published at once.
    assert ring.advance(500) == ["KeyActivated", "KeyRetired", "KeyPublished"]
    assert ring.order == ["k2", "k3"]


def test_a_request_rotates_once_and_a_pending_key_answers_it() -> None:
    ring = Keys()
    assert ring.advance(5, request="r1") == ["KeyPublished"]
    assert ring.advance(6, request="r1") == []
    assert ring.advance(7, request="r2") == [] and ring.order == ["k1", "k2"]  # k2 is on its way already
    assert ring.advance(15, request="r2") == ["KeyActivated"]
    assert ring.advance(20, request="r3") == ["KeyPublished"] and ring.order == ["k2", "k1", "k3"]
    assert keys.key_status(ring.schedule, TIMING, at(20))["request"] == "r3"


def test_keys_without_a_schedule_are_adopted() -> None:
    first, second = generate_signing_key("a"), generate_signing_key("b")
    secret = {"metadata": {"name": "s"}, "data": {
        "signing-keys.json": base64.b64encode(json.dumps({"keys": [first, second]}).encode()).decode()}}
    schedule, private = keys.read_secret(secret, TIMING, at(0))
    assert [k["kid"] for k in private] == ["a", "b"]
    assert schedule.signer(at(0)).kid == "a"  # type: ignore[union-attr]
    assert keys.advance(schedule, private, TIMING, at(70)).private_keys == [first]


def test_keys_replaced_by_hand_win_over_their_schedule() -> None:
    ring = Keys()
    ring.advance(100)  # k1 signs, k2 published
    by_hand = generate_signing_key("mine")
    secret = {"metadata": {"name": "s", "annotations": {SCHEDULE_ANNOTATION: ring.schedule.to_json()}},
              "data": {"signing-keys.json": base64.b64encode(json.dumps({"keys": [by_hand]}).encode()).decode()}}
    schedule, private = keys.read_secret(secret, TIMING, at(105))
    step = keys.advance(schedule, private, TIMING, at(110))
    assert step.private_keys == [by_hand] and step.stages == []


def test_the_spec_refuses_an_overlap_shorter_than_the_access_tokens() -> None:
    base = platform("x")["spec"]
    with pytest.raises(ValidationError, match=r"overlapSeconds \(600\) must be at least accessTokenTTLSeconds"):
        VezaPlatformSpec.model_validate({**base, "auth": {"accessTokenTTLSeconds": 900,
                                                          "keyRotation": {"overlapSeconds": 600}}})
    spec = VezaPlatformSpec.model_validate({**base, "auth": {"accessTokenTTLSeconds": 900, "keyRotation": {}}})
    assert spec.auth.key_overlap_seconds == 900
    # By default also the API's service tokens (5 min) and OIDC logins in progress (10 min) outlive no key.
    short = VezaPlatformSpec.model_validate({**base, "auth": {"accessTokenTTLSeconds": 60}})
    assert short.auth.key_overlap_seconds == 600


# -- the operator on a real API server ------------------------------------------------------------


def secret_keys(kube: KubeCluster, ns: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """Kids of signing-keys.json (signer first) and of jwks.json, and the schedule annotation."""
    secret = kube.get("secret", "demo-jwt-keys", ns) or {}
    data = {k: json.loads(base64.b64decode(v)) for k, v in (secret.get("data") or {}).items()}
    schedule = json.loads(((secret.get("metadata") or {}).get("annotations") or {}).get(SCHEDULE_ANNOTATION, "{}"))
    return ([k["kid"] for k in data.get("signing-keys.json", {}).get("keys", [])],
            [k["kid"] for k in data.get("jwks.json", {}).get("keys", [])], schedule)


def events(kube: KubeCluster, ns: str) -> list[str]:
    items = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    return [e["reason"] for e in sorted(items, key=lambda e: e["metadata"]["creationTimestamp"])
            if e["reason"].startswith("Key")]


def veza_keys(kube: KubeCluster, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "veza_cli.main", "keys", *args, "--kubeconfig", str(kube.kubeconfig)],
                          capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.mark.kube
def test_the_operator_rolls_keys_in_stages_and_resumes_after_a_restart(kube: KubeCluster, ns: str,
                                                                        operator: OperatorProcess) -> None:
    propagation, overlap = 4, 60  # the shortest overlap the spec allows: the access tokens' 60 s
    kube.apply(connections_secret(ns), platform(ns, auth={
        "accessTokenTTLSeconds": overlap,
        "keyRotation": {"periodSeconds": 3600, "overlapSeconds": overlap, "propagationSeconds": propagation}}))
    wait_for(lambda: ((kube.get("vezaplatform", "demo", ns) or {}).get("status") or {}).get("keys"), timeout=60,
             message="status.keys")
    [first], [first_public], _ = secret_keys(kube, ns)
    assert first == first_public
    status = json.loads(veza_keys(kube, "status", "--platform", "demo", "-n", ns, "-o", "json"))
    assert status["active"] == first and status["nextRotation"]  # an hour after the first key signed

    veza_keys(kube, "rotate", "--platform", "demo", "-n", ns)
    # 1. published: the new key verifies everywhere before it signs anywhere.
    signing, public, schedule = wait_for(lambda: (found := secret_keys(kube, ns))[0][1:] and found, timeout=30,
                                         message="a second key published")
    second = signing[1]
    assert signing == [first, second] and public == [first, second]
    times = {k["kid"]: k for k in schedule["keys"]}
    activates = keys.parse_stamp(times[second]["activates"])
    retires = keys.parse_stamp(times[first]["retires"])
    assert activates - keys.parse_stamp(times[second]["published"]) == timedelta(seconds=propagation)
    assert retires - activates == timedelta(seconds=propagation + overlap)

    # 2. The operator is down when the activation comes due: restarted, it resumes from the Secret.
    operator.stop()
    try:
        time.sleep(propagation + 1)  # the activation's due time passes while nothing runs
        assert secret_keys(kube, ns)[0] == [first, second]
    finally:
        operator.start()
    wait_for(lambda: secret_keys(kube, ns)[0] == [second, first], timeout=30, message="the new key signing")
    assert datetime.now(UTC) < retires
    out = veza_keys(kube, "status", "--platform", "demo", "-n", ns)
    assert f"{second}" in out and "signing" in out and "verifying" in out

    # 3. retired once the overlap has passed: the old key leaves jwks.json, and only then.
    wait_for(lambda: secret_keys(kube, ns)[1] == [second], timeout=overlap + propagation + 30, interval=1,
             message="the old key retired")
    assert datetime.now(UTC) >= retires
    assert events(kube, ns) == ["KeyPublished", "KeyActivated", "KeyRetired"]
    final = (kube.get("vezaplatform", "demo", ns) or {})["status"]["keys"]
    assert final["active"] == second and [k["kid"] for k in final["keys"]] == [second]
    assert 'veza_operator_key_rotations_total{stage="retired"}' in operator.metrics()
    if kube.plane is not None:  # between stages, resyncs write nothing (the audit log says)
        since = quiet(kube, ns)
        resync_rounds(kube, operator)
        assert [w for w in writes_by(kube, OPERATOR_USER, since)
                if w.get("objectRef", {}).get("namespace") == ns] == []


@pytest.mark.kube
def test_the_api_server_refuses_an_overlap_shorter_than_the_access_tokens(kube: KubeCluster, ns: str) -> None:
    bad = platform(ns, auth={"accessTokenTTLSeconds": 900, "keyRotation": {"overlapSeconds": 300}})
    result = kube.run("kubectl", "apply", "--server-side", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "overlapSeconds must be at least accessTokenTTLSeconds" in result.stderr


@pytest.mark.kube
def test_a_platform_without_rotation_keeps_its_key_and_no_schedule_in_status(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns))
    wait_for(lambda: secret_keys(kube, ns)[0], timeout=60, message="the keys Secret")
    [only], _, schedule = secret_keys(kube, ns)
    assert [k["kid"] for k in schedule["keys"]] == [only]
    assert not ((kube.get("vezaplatform", "demo", ns) or {}).get("status") or {}).get("keys")
    assert ROTATE_ANNOTATION not in ((kube.get("vezaplatform", "demo", ns) or {})["metadata"].get("annotations") or {})
