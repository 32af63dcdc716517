"""Operator benchmark: N ChatRooms under one VezaPlatform on a local control plane.

    .venv/bin/python bench/operator_bench.py [--rooms 1000] [--idle-seconds 300]

Baseline, measured in the same run on a fresh control plane: the same N
Deployments + Services created directly by a plain client loop, timed until
all are Available. Then, on another fresh control plane, the operator: the
platform and N rooms created by the same kind of loop, timed until every room
reports Ready=True; per room, the delay from its creation to its Deployment
appearing; API writes during an idle window (from the audit log); operator CPU
while idle and RSS at N rooms.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from veza_local.controlplane import ControlPlane, tool, wait_for  # noqa: E402
from veza_local.services import free_port  # noqa: E402

NS = "bench"
SA_NS, SA = "veza-system", "veza"
USER = f"system:serviceaccount:{SA_NS}:{SA}"


def say(msg: str) -> None:
    print(f"[operator-bench] {msg}", file=sys.stderr, flush=True)


def client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=config)
    config.connection_pool_maxsize = 8
    return kubernetes.client.ApiClient(config)


def kubectl(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    return plane.kubectl(*args, input=input)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def count_available(apps: kubernetes.client.AppsV1Api) -> int:
    items = apps.list_namespaced_deployment(NS).items
    return sum(1 for d in items if (d.status.available_replicas or 0) >= 1)


# -- baseline: a plain client loop ---------------------------------------------------------

def run_baseline(rooms: int, work: Path) -> dict[str, float]:
    with ControlPlane(work / "baseline") as plane:
        kubectl(plane, "create", "namespace", NS)
        wait_for(lambda: plane.kubectl("get", "sa", "default", "-n", NS, "--ignore-not-found"), 30)
        api = client(plane.kubeconfig)
        apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
        say(f"baseline: creating {rooms} Deployments + Services directly")
        start = time.monotonic()
        for i in range(rooms):
            labels = {"app": f"room-{i}"}
            apps.create_namespaced_deployment(NS, {
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"chat-{i}"},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"containers": [{"name": "chat", "image": "veza:bench"}]}}}})
            core.create_namespaced_service(NS, {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"chat-{i}"},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}})
        created = time.monotonic() - start
        wait_for(lambda: count_available(apps) >= rooms, timeout=900, interval=1,
                 message="all baseline Deployments available")
        total = time.monotonic() - start
        say(f"baseline: created in {created:.1f} s, all available after {total:.1f} s")
        return {"create_seconds": created, "all_available_seconds": total}


# -- the operator --------------------------------------------------------------------------

def install_operator(plane: ControlPlane, work: Path) -> Path:
    kubectl(plane, "apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    kubectl(plane, "create", "namespace", SA_NS)
    rendered = subprocess.run(
        [tool("helm"), "template", "veza", str(REPO / "charts" / "veza"), "--namespace", SA_NS,
         "--set", f"serviceAccount.name={SA}", "--show-only", "templates/serviceaccount.yaml",
         "--show-only", "templates/rbac.yaml", "--show-only", "templates/peering.yaml"],
        check=True, capture_output=True, text=True).stdout
    kubectl(plane, "apply", "-f", "-", input=rendered)
    token = json.loads(kubectl(plane, "create", "--raw", f"/api/v1/namespaces/{SA_NS}/serviceaccounts/{SA}/token",
                               "-f", "-", input=json.dumps({"apiVersion": "authentication.k8s.io/v1",
                                                            "kind": "TokenRequest", "spec": {}})))["status"]["token"]
    path = work / "operator.kubeconfig"
    path.write_text(plane.kubeconfig_for(token, USER))
    return path


def room_manifest(i: int) -> dict[str, Any]:
    return {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "metadata": {"name": f"room-{i}"},
            # Dedicated: this benchmark times each room's own Deployment (pooled rooms have none).
            "spec": {"platformRef": {"name": "bench"}, "placement": "Dedicated"}}


def ready_rooms(custom: kubernetes.client.CustomObjectsApi) -> int:
    items = custom.list_namespaced_custom_object("veza.io", "v1alpha1", NS, "chatrooms")["items"]
    ready = 0
    for item in items:
        for cond in (item.get("status") or {}).get("conditions") or []:
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready += 1
    return ready


def watch_deployments(api: kubernetes.client.ApiClient, seen: dict[str, float], stop: threading.Event) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    while not stop.is_set():
        try:
            for event in kubernetes.watch.Watch().stream(apps.list_namespaced_deployment, NS, timeout_seconds=5):
                name = event["object"].metadata.name
                seen.setdefault(name, time.monotonic())
                if stop.is_set():
                    break
        except Exception:  # noqa: S112 - a watch that ends early is simply restarted
            continue


def run_operator(rooms: int, idle_seconds: float, work: Path) -> dict[str, Any]:
    with ControlPlane(work / "operator") as plane:
        kubeconfig = install_operator(plane, work)
        kubectl(plane, "create", "namespace", NS)
        wait_for(lambda: plane.kubectl("get", "sa", "default", "-n", NS, "--ignore-not-found"), 30)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "VEZA_RESYNC_SECONDS": "60"}
        log = open(work / "operator.log", "wb")  # noqa: SIM115 - child process output
        proc = subprocess.Popen(
            [sys.executable, "-m", "veza_cli.main", "operator", "--bind", "127.0.0.1",
             "--liveness-port", str(free_port()), "--metrics-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return measure_operator(plane, proc, rooms, idle_seconds)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()


def measure_operator(plane: ControlPlane, proc: subprocess.Popen[bytes], rooms: int,
                     idle_seconds: float) -> dict[str, Any]:
    api = client(plane.kubeconfig)
    custom, core = kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)
    core.create_namespaced_secret(NS, {"metadata": {"name": "veza-connections",
                                                    "labels": {"veza.io/usable-by": "bench"}}, "stringData": {
        "postgres-uri": "postgresql://veza@postgres/veza", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}})
    platform = yaml.safe_load((REPO / "examples" / "platform.yaml").read_text().split("---", 1)[1])
    platform["metadata"] = {"name": "bench"}
    platform["spec"]["api"] = {"replicas": 1}
    custom.create_namespaced_custom_object("veza.io", "v1alpha1", NS, "vezaplatforms", platform)
    time.sleep(3)  # the operator is up and has seen the platform

    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_deployments, args=(api, seen, stop), daemon=True)
    watcher.start()
    say(f"operator: creating {rooms} ChatRooms")
    created_at: dict[str, float] = {}
    start = time.monotonic()
    for i in range(rooms):
        created_at[f"chat-room-{i}"] = time.monotonic()
        custom.create_namespaced_custom_object("veza.io", "v1alpha1", NS, "chatrooms", room_manifest(i))
    create_seconds = time.monotonic() - start
    wait_for(lambda: ready_rooms(custom) >= rooms, timeout=900, interval=1, message="all rooms Ready")
    all_ready = time.monotonic() - start
    stop.set()
    delays = [seen[name] - t for name, t in created_at.items() if name in seen]
    say(f"operator: created in {create_seconds:.1f} s, all Ready after {all_ready:.1f} s")

    time.sleep(5)  # let the last status echoes settle
    operator = psutil.Process(proc.pid)
    rss = sum(p.memory_info().rss for p in [operator, *operator.children(recursive=True)])
    cpu_before = operator.cpu_times()
    since = len(plane.audit_events())
    say(f"operator: idle for {idle_seconds:.0f} s, counting API writes")
    time.sleep(idle_seconds)
    cpu_after = operator.cpu_times()
    events = [e for e in plane.audit_events()[since:] if e.get("user", {}).get("username") == USER]
    peering = [e for e in events if e["objectRef"].get("resource") in ("clusterkopfpeerings", "kopfpeerings")]
    breakdown: dict[str, int] = {}
    for e in events:
        ref = e["objectRef"]
        label = f"{e['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
        breakdown[label] = breakdown.get(label, 0) + 1
    say(f"operator: writes while idle: {breakdown}")
    idle_cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / idle_seconds
    return {
        "create_seconds": create_seconds,
        "all_ready_seconds": all_ready,
        "children_p50_seconds": percentile(delays, 0.5) if delays else None,
        "children_p99_seconds": percentile(delays, 0.99) if delays else None,
        "children_observed": len(delays),
        "idle_writes": len(events) - len(peering),
        "idle_peering_keepalives": len(peering),
        "idle_cpu_percent": round(idle_cpu * 100, 2),
        "rss_mb": round(rss / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=300)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control planes on the way out
    with tempfile.TemporaryDirectory(prefix="veza-opbench-") as tmp:
        work = Path(tmp)
        baseline = run_baseline(args.rooms, work)
        result = run_operator(args.rooms, args.idle_seconds, work)
    figures = {
        "benchmark": "operator",
        "rooms": args.rooms,
        "baseline_all_available_seconds": round(baseline["all_available_seconds"], 2),
        "baseline_create_seconds": round(baseline["create_seconds"], 2),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()},
        "ratio_to_baseline": round(result["all_ready_seconds"] / baseline["all_available_seconds"], 3),
        "idle_seconds": args.idle_seconds,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
