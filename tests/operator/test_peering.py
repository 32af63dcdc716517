"""Two operator replicas with one peering name: one is active; when it dies, the other takes over."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.kube import KubeCluster
from tests.support.operator import (
    OperatorProcess,
    active_identities,
    connections_secret,
    platform,
    room,
    wait_condition,
)
from veza_local.controlplane import wait_for

pytestmark = pytest.mark.kube


def test_failover_to_the_standby_replica(kube: KubeCluster, operator_install: Path, tmp_path: Path,
                                         operator_stepped_aside: None) -> None:
    ns = kube.create_namespace("peer")
    kube.apply(connections_secret(ns), platform(ns), room(ns, "before"))
    # POD_ID names a replica in the peering records (the chart sets it from the pod name).
    # The first replica starts alone and fills its store, so that whichever of the two becomes the
    # standby, it may be one that has something it could reconcile.
    first = OperatorProcess(operator_install, tmp_path / "a.log", extra_env={"POD_ID": "replica-a"}).start()
    second: OperatorProcess | None = None
    try:
        wait_condition(kube, "chatroom", "before", ns)
        second = OperatorProcess(operator_install, tmp_path / "b.log", extra_env={"POD_ID": "replica-b"}).start()
        ours = {"replica-a": first, "replica-b": second}
        wait_for(lambda: set(ours) <= set(active_identities(kube)), timeout=30, message="both replicas keep peering")
        # The record of a replica stopped just before (the shared operator) lingers until its
        # keep-alive expires and may pause both meanwhile: the victim is the higher of ours.
        peers = {ident: priority for ident, priority in active_identities(kube).items() if ident in ours}
        top = max(peers, key=lambda ident: peers[ident])
        victim = ours[top]
        survivor = second if victim is first else first
        wait_for(lambda: survivor.standing_by() and not victim.standing_by(), timeout=30,
                 message="one active, one standby")

        baseline = {first: first.reconciles(), second: second.reconciles()}
        kube.apply(room(ns, "during"))
        wait_condition(kube, "chatroom", "during", ns)
        # Let the standby's resync (every 3 s here) come round twice.
        time.sleep(7)
        assert victim.reconciles() > baseline[victim], "the active replica did the work"
        assert survivor.reconciles() == baseline[survivor], "the standby stayed paused"
        victim.stop(signal.SIGKILL)

        kube.apply(room(ns, "after"))
        # The survivor resumes once the dead replica's keep-alive expires (VEZA_PEERING_LIFETIME=6 s).
        wait_condition(kube, "chatroom", "after", ns, timeout=45)
        assert survivor.alive() and survivor.reconciles() > baseline[survivor]
        assert not survivor.standing_by()
        kube.delete_namespace(ns)
    finally:
        first.stop()
        if second is not None:
            second.stop()
