"""Operator benchmark: N ChatRooms under one VezaPlatform on a local control plane.

    .venv/bin/python bench/operator_bench.py [--placement Pooled] [--rooms 10000]
        [--resync-seconds 120] [--idle-seconds 300]
    .venv/bin/python bench/operator_bench.py --placement Dedicated [--rooms 1000]

Pooled (the default: 10,000 rooms on the platform's chat pool). Baseline, measured in
the same run on a fresh control plane with the CRDs installed and no operator: a
plain client loop creates the same N ChatRooms and writes each one's status once,
as the operator does (one merge patch of the status subresource per room), timed
until done. Then, on another fresh control plane, the operator: the platform is
created and its chat pool waited for (kwok plays the kubelet, so the pool's pods
become Ready like any Deployment's), then the N rooms by the same kind of loop,
timed until every room reports Ready=True (a watch records when each turns Ready).

Dedicated (1,000 rooms on Deployments of their own): the baseline creates the same
N Deployments + Services directly and waits until all are Available; the operator
run also reports, per room, the delay from its creation to its Deployment appearing.

Both placements then report, from the API server's audit log, the objects the
operator created in the namespace by kind (the platform's and the pool's; a pooled
room adds none: `objects_per_room`) and the status writes per room; the operator's
RSS at N rooms; and, over an idle window, its CPU between resyncs, the CPU and API
writes of each full resync of the N rooms (the audit log: a no-op resync writes
nothing; kopf's peering keep-alives are counted apart), and from those the idle CPU
at the default resync period (600 s): CPU between resyncs + one resync's CPU / 600 s.
The operator runs with a short resync period (`--resync-seconds`, 120 s by default)
so that the idle window holds resyncs; resyncs are told apart from the quiet between
them by the operator's reconcile counter (its metrics port), sampled every 2 s.

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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from veza_local.controlplane import ControlPlane, tool, wait_for  # noqa: E402
from veza_local.services import free_port  # noqa: E402
from veza_operator.conditions import Health, conditions  # noqa: E402
from veza_operator.naming import pool_name, selector_labels, selector_string  # noqa: E402

NS = "bench"
PLATFORM = "bench"
SA_NS, SA = "veza-system", "veza"
USER = f"system:serviceaccount:{SA_NS}:{SA}"
GROUP, VERSION = "veza.io", "v1alpha1"
DEFAULT_RESYNC_SECONDS = 600.0  # Settings.resync_seconds (VEZA_RESYNC_SECONDS)
SAMPLE_SECONDS = 2.0
PEERING = ("clusterkopfpeerings", "kopfpeerings")


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


def room_manifest(i: int, placement: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ChatRoom", "metadata": {"name": f"room-{i}"},
            "spec": {"platformRef": {"name": PLATFORM}, "placement": placement}}


def install_crds(plane: ControlPlane) -> None:
    kubectl(plane, "apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


def create_namespace(plane: ControlPlane) -> None:
    kubectl(plane, "create", "namespace", NS)
    wait_for(lambda: plane.kubectl("get", "sa", "default", "-n", NS, "--ignore-not-found"), 30)


# -- baselines: a plain client loop ----------------------------------------------------------

def run_dedicated_baseline(rooms: int, work: Path) -> dict[str, float]:
    """The same Deployments + Services created directly, timed until all are Available."""
    with ControlPlane(work / "baseline") as plane:
        create_namespace(plane)
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
        wait_for(lambda: count_available(apps) >= rooms, timeout=1800, interval=1,
                 message="all baseline Deployments available")
        total = time.monotonic() - start
        say(f"baseline: created in {created:.1f} s, all available after {total:.1f} s")
        return {"create_seconds": created, "done_seconds": total}


def pooled_status(name: str) -> dict[str, Any]:
    """The status the operator writes for a room on the chat pool (workers.reconcile, chatroom.pool_health)."""
    health = Health(True, "Pooled", "Served by the platform's chat pool.")
    return {"observedGeneration": 1, "conditions": conditions(health, 1, None), "replicas": 0, "readyReplicas": 0,
            "selector": selector_string(selector_labels(PLATFORM, "chat", name)),
            "url": f"http://veza.example.com/chat/{name}", "placement": "Pooled",
            "placementChangedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_pooled_baseline(rooms: int, work: Path) -> dict[str, float]:
    """The same ChatRooms (CRDs, no operator) created and each given its status once, timed until done."""
    with ControlPlane(work / "baseline") as plane:
        install_crds(plane)
        create_namespace(plane)
        custom = kubernetes.client.CustomObjectsApi(client(plane.kubeconfig))
        say(f"baseline: creating {rooms} ChatRooms and writing each one's status")
        start = time.monotonic()
        for i in range(rooms):
            name = f"room-{i}"
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "chatrooms", room_manifest(i, "Pooled"))
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, "chatrooms", name,
                                                         {"status": pooled_status(name)})
        total = time.monotonic() - start
        say(f"baseline: {rooms} rooms created with their status in {total:.1f} s")
        return {"create_seconds": total, "done_seconds": total}


# -- the operator ----------------------------------------------------------------------------

def install_operator(plane: ControlPlane, work: Path) -> Path:
    install_crds(plane)
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


def is_ready(item: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (item.get("status") or {}).get("conditions") or [])


def watch_ready(api: kubernetes.client.ApiClient, ready_at: dict[str, float], stop: threading.Event) -> None:
    """When each room first reports Ready=True (a watch: polling 10,000 rooms would load the machine)."""
    custom = kubernetes.client.CustomObjectsApi(api)
    version = None
    while not stop.is_set():
        try:
            stream = kubernetes.watch.Watch().stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, NS, "chatrooms", timeout_seconds=60,
                **({"resource_version": version} if version else {}))
            for event in stream:
                item = event["object"]
                version = item["metadata"]["resourceVersion"]
                if is_ready(item):
                    ready_at.setdefault(item["metadata"]["name"], time.monotonic())
                if stop.is_set():
                    break
        except Exception:  # an expired version or a dropped watch: list again from now
            version = None
            continue


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


@dataclass
class Sample:
    at: float  # monotonic seconds
    cpu: float  # the operator's user + system CPU seconds
    rss: int
    reconciles: float


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def sample(operator: psutil.Process, metrics_port: int) -> Sample:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    procs = [operator, *operator.children(recursive=True)]
    cpu = sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    return Sample(time.monotonic(), cpu, sum(p.memory_info().rss for p in procs),
                  metric_sum(text, "veza_operator_reconciles_total"))


def split_resyncs(samples: list[Sample], rooms: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Runs of sampling intervals in which reconciles ran, those of a full resync (≥ half the rooms reconciled),
    and the quiet intervals (none ran). Intervals are indices i of (samples[i-1], samples[i])."""
    busy: list[tuple[int, int]] = []
    quiet: list[int] = []
    run_start = None
    for i in range(1, len(samples)):
        active = samples[i].reconciles > samples[i - 1].reconciles
        if active and run_start is None:
            run_start = i
        if not active:
            quiet.append(i)
            if run_start is not None:
                busy.append((run_start, i - 1))
                run_start = None
    if run_start is not None:
        busy.append((run_start, len(samples) - 1))
    full = [(a, b) for a, b in busy if samples[b].reconciles - samples[a - 1].reconciles >= rooms / 2]
    return full, quiet


def measure_idle(plane: ControlPlane, operator: psutil.Process, metrics_port: int, rooms: int,
                 idle_seconds: float) -> dict[str, Any]:
    """CPU between resyncs, CPU and writes of each resync, peak RSS, over `idle_seconds` of no changes."""
    since = len(plane.audit_events())
    say(f"operator: idle for {idle_seconds:.0f} s (resyncs included), sampling CPU and reconciles")
    samples = [sample(operator, metrics_port)]
    deadline = samples[0].at + idle_seconds
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_SECONDS)
        samples.append(sample(operator, metrics_port))
    events = [e for e in plane.audit_events()[since:] if e.get("user", {}).get("username") == USER]
    peering = [e for e in events if e["objectRef"].get("resource") in PEERING]
    say(f"operator: writes while idle: {breakdown(e for e in events if e not in peering)}")

    full, quiet = split_resyncs(samples, rooms)
    quiet_time = sum(samples[i].at - samples[i - 1].at for i in quiet)
    quiet_cpu = sum(samples[i].cpu - samples[i - 1].cpu for i in quiet)
    idle_rate = quiet_cpu / quiet_time if quiet_time else None
    costs, durations = [], []
    for a, b in full:
        # The run's intervals plus the one after it (the last reconciles' CPU may fall there), less the quiet rate.
        end = min(b + 1, len(samples) - 1)
        span = samples[end].at - samples[a - 1].at
        costs.append(samples[end].cpu - samples[a - 1].cpu - (idle_rate or 0.0) * span)
        durations.append(samples[b].at - samples[a - 1].at)
    resync_cpu = sum(costs) / len(costs) if costs else None
    say(f"operator: {len(full)} full resync(s) in the window, CPU {[round(c, 2) for c in costs]} s each")
    at_default = (idle_rate + resync_cpu / DEFAULT_RESYNC_SECONDS
                  if idle_rate is not None and resync_cpu is not None else None)
    return {
        "idle_writes": len(events) - len(peering),
        "idle_peering_keepalives": len(peering),
        "resyncs_in_window": len(full),
        "resync_cpu_seconds": resync_cpu,
        "resync_cpu_ms_per_room": resync_cpu * 1000 / rooms if resync_cpu is not None else None,
        "resync_wall_seconds": max(durations) if durations else None,
        "idle_cpu_between_resyncs_percent": round(idle_rate * 100, 2) if idle_rate is not None else None,
        "idle_cpu_window_percent": round((samples[-1].cpu - samples[0].cpu) / (samples[-1].at - samples[0].at)
                                         * 100, 2),
        "idle_cpu_at_default_resync_percent": round(at_default * 100, 2) if at_default is not None else None,
        "rss_peak_idle_mb": round(max(s.rss for s in samples) / 2**20, 1),
    }


def breakdown(events: Any) -> dict[str, int]:
    """Audit events counted by verb and resource ('create deployments', 'patch chatrooms/status')."""
    out: dict[str, int] = {}
    for e in events:
        ref = e["objectRef"]
        label = f"{e['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
        out[label] = out.get(label, 0) + 1
    return out


def created_by_kind(events: list[dict[str, Any]], user: str | None = USER) -> dict[str, int]:
    """Objects created in the benchmark's namespace (by `user`; by anyone when None), by resource.

    The operator creates its children by server-side apply: a patch answered 201 Created."""
    out: dict[str, int] = {}
    for e in events:
        ref = e["objectRef"]
        code = (e.get("responseStatus") or {}).get("code", 0)
        created = (e["verb"] == "create" and code < 300) or (e["verb"] == "patch" and code == 201)
        if (created
                and not ref.get("subresource") and ref.get("namespace") == NS
                and (user is None or e.get("user", {}).get("username") == user)):
            out[ref["resource"]] = out.get(ref["resource"], 0) + 1
    return dict(sorted(out.items()))


def run_operator(placement: str, rooms: int, resync_seconds: float, idle_seconds: float, ready_timeout: float,
                 work: Path) -> dict[str, Any]:
    with ControlPlane(work / "operator") as plane:
        kubeconfig = install_operator(plane, work)
        create_namespace(plane)
        metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "VEZA_RESYNC_SECONDS": str(resync_seconds)}
        log = open(work / "operator.log", "wb")  # noqa: SIM115 - child process output
        proc = subprocess.Popen(
            [sys.executable, "-m", "veza_cli.main", "operator", "--bind", "127.0.0.1",
             "--liveness-port", str(free_port()), "--metrics-port", str(metrics_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return measure_operator(plane, proc, metrics_port, placement, rooms, idle_seconds, ready_timeout)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # still busy with a queue of thousands: the figures are taken
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            log.close()


def cpu_percent(process: psutil.Process, since: Any, seconds: float) -> float:
    now = process.cpu_times()
    return (now.user + now.system - since.user - since.system) / seconds * 100


def create_platform(plane: ControlPlane, api: kubernetes.client.ApiClient) -> None:
    custom, core = kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)
    core.create_namespaced_secret(NS, {"metadata": {"name": "veza-connections",
                                                    "labels": {"veza.io/usable-by": PLATFORM}}, "stringData": {
        "postgres-uri": "postgresql://veza@postgres/veza", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}})
    platform = yaml.safe_load((REPO / "examples" / "platform.yaml").read_text().split("---", 1)[1])
    platform["metadata"] = {"name": PLATFORM}
    platform["spec"]["api"] = {"replicas": 1}
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "vezaplatforms", platform)


def measure_operator(plane: ControlPlane, proc: subprocess.Popen[bytes], metrics_port: int, placement: str,
                     rooms: int, idle_seconds: float, ready_timeout: float) -> dict[str, Any]:
    api = client(plane.kubeconfig)
    custom, apps = kubernetes.client.CustomObjectsApi(api), kubernetes.client.AppsV1Api(api)
    create_platform(plane, api)
    if placement == "Pooled":
        # Rooms are added to a running platform: its chat pool serves (kwok makes its pods Ready).
        def pool_ready() -> bool:
            found = apps.list_namespaced_deployment(NS, field_selector=f"metadata.name={pool_name(PLATFORM)}")
            return any((d.status.ready_replicas or 0) >= 1 for d in found.items)
        wait_for(pool_ready, timeout=180, interval=1, message="the chat pool ready")
    else:
        wait_for(lambda: plane.kubectl("get", "sa", f"{PLATFORM}-worker", "-n", NS, "--ignore-not-found"), 60)
    time.sleep(3)  # the operator has seen it
    audit_before = len(plane.audit_events())

    seen: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=watch_ready, args=(api, ready_at, stop), daemon=True)]
    if placement == "Dedicated":
        threads.append(threading.Thread(target=watch_deployments, args=(api, seen, stop), daemon=True))
    for thread in threads:
        thread.start()
    say(f"operator: creating {rooms} {placement} ChatRooms")
    operator = psutil.Process(proc.pid)
    cpu_start = operator.cpu_times()
    created_at: dict[str, float] = {}
    start = time.monotonic()
    for i in range(rooms):
        created_at[f"room-{i}"] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "chatrooms", room_manifest(i, placement))
    create_seconds = time.monotonic() - start
    say(f"operator: created in {create_seconds:.1f} s; waiting for all Ready")
    last_report = time.monotonic()

    def all_ready() -> bool:
        nonlocal last_report
        if time.monotonic() - last_report > 30:
            say(f"operator: {len(ready_at)}/{rooms} Ready after {time.monotonic() - start:.0f} s")
            last_report = time.monotonic()
        return len(ready_at) >= rooms

    try:
        wait_for(all_ready, timeout=ready_timeout, interval=1, message="all rooms Ready")
    except TimeoutError:
        # Too slow to finish here: how far it came, and at what rate (no idle window: it is not idle).
        stop.set()
        elapsed = time.monotonic() - start
        say(f"operator: only {len(ready_at)}/{rooms} Ready after {elapsed:.0f} s")
        return {"create_seconds": create_seconds, "all_ready_seconds": None, "ready_rooms": len(ready_at),
                "ready_after_seconds": elapsed, "ready_per_second": len(ready_at) / elapsed,
                "ready_phase_cpu_percent": round(cpu_percent(operator, cpu_start, elapsed), 1),
                "rss_mb": round(operator.memory_info().rss / 2**20, 1)}
    all_ready_seconds = max(ready_at.values()) - start
    ready_cpu = cpu_percent(operator, cpu_start, time.monotonic() - start)
    stop.set()
    to_ready = [ready_at[name] - t for name, t in created_at.items()]
    say(f"operator: all {rooms} Ready after {all_ready_seconds:.1f} s")

    time.sleep(5)  # let the last status echoes settle
    rss = sum(p.memory_info().rss for p in [operator, *operator.children(recursive=True)])
    audit = plane.audit_events()
    during_rooms = audit[audit_before:]
    ours = [e for e in during_rooms if e.get("user", {}).get("username") == USER]
    by_operator = created_by_kind(audit)
    per_room = {k: v for k, v in created_by_kind(during_rooms).items() if k != "events"}
    say(f"operator: objects it created in {NS}: {by_operator}; while the rooms came: {per_room}")
    status_writes = sum(1 for e in ours if e["objectRef"].get("resource") == "chatrooms"
                        and e["objectRef"].get("subresource") == "status" and e["verb"] == "patch")
    idle = measure_idle(plane, operator, metrics_port, rooms, idle_seconds)
    dedicated: dict[str, Any] = {}
    if placement == "Dedicated":  # creation -> the room's own Deployment exists
        delays = [seen[f"chat-{name}"] - t for name, t in created_at.items() if f"chat-{name}" in seen]
        dedicated = {"children_p50_seconds": percentile(delays, 0.5) if delays else None,
                     "children_p99_seconds": percentile(delays, 0.99) if delays else None,
                     "children_observed": len(delays)}
    return {
        "create_seconds": create_seconds,
        "all_ready_seconds": all_ready_seconds,
        "ready_p50_seconds": percentile(to_ready, 0.5),
        "ready_p99_seconds": percentile(to_ready, 0.99),
        "ready_per_second": rooms / all_ready_seconds,
        "ready_phase_cpu_percent": round(ready_cpu, 1),  # the operator's, while the rooms came
        **dedicated,
        "operator_objects": by_operator,
        "operator_objects_during_rooms": per_room,
        "objects_per_room": round(sum(per_room.values()) / rooms, 4),
        "namespace_objects_during_rooms": {k: v for k, v in created_by_kind(during_rooms, None).items()
                                           if k not in ("chatrooms", "events")},
        "events_per_room": round(created_by_kind(during_rooms).get("events", 0) / rooms, 3),
        "status_writes_per_room": round(status_writes / rooms, 3),
        "operator_writes_during_rooms": breakdown(e for e in ours if e["objectRef"].get("resource") not in PEERING),
        "rss_mb": round(rss / 2**20, 1),
        **idle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--placement", choices=("Pooled", "Dedicated"), default="Pooled")
    parser.add_argument("--rooms", type=int, default=None, help="default: 10000 Pooled, 1000 Dedicated")
    parser.add_argument("--resync-seconds", type=float, default=120,
                        help="the operator's VEZA_RESYNC_SECONDS in this run (short, so the idle window holds resyncs)")
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--ready-timeout", type=float, default=1800,
                        help="give up waiting for all rooms Ready after this long: report how many were, and the rate")
    args = parser.parse_args()
    rooms = args.rooms or (10000 if args.placement == "Pooled" else 1000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control planes on the way out
    with tempfile.TemporaryDirectory(prefix="veza-opbench-") as tmp:
        work = Path(tmp)
        baseline = (run_pooled_baseline if args.placement == "Pooled" else run_dedicated_baseline)(rooms, work)
        result = run_operator(args.placement, rooms, args.resync_seconds, args.idle_seconds, args.ready_timeout, work)
    figures = {
        "benchmark": "operator",
        "placement": args.placement,
        "rooms": rooms,
        # Pooled: the rooms created with their status; Dedicated: the Deployments + Services all Available.
        "baseline_done_seconds": round(baseline["done_seconds"], 2),
        "baseline_create_seconds": round(baseline["create_seconds"], 2),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()},
        "ratio_to_baseline": (round(result["all_ready_seconds"] / baseline["done_seconds"], 3)
                              if result["all_ready_seconds"] is not None else None),
        "resync_seconds": args.resync_seconds,
        "idle_seconds": args.idle_seconds,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
