"""`veza keys`: roll a platform's JWT signing key now, or show its keys and their times.

`rotate` asks the operator for a rotation by giving the platform's annotation `veza.io/rotate-keys`
a new value; the operator carries it out in the same stages as a scheduled one (publish, sign,
retire) and records it in the platform's status.keys, which `status` prints. So the command needs
only `patch` on vezaplatforms (rotate) and `get` (status), never the keys Secret.

With `--keys-dir` (the keys directory of `veza up`, `.veza/jwt-keys`) no operator is involved: the
command runs the same stages itself, in the foreground, on the files (one machine: the workers
re-read them within 5 s, hence the short default propagation). The schedule is kept next to the keys
(`key-schedule.json`), so an interrupted run resumes where it stopped when run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from veza_core.keys import ROTATE_ANNOTATION, SIGNING_KEYS_FILE, secret_data

GROUP, VERSION, PLURAL = "veza.io", "v1alpha1", "vezaplatforms"
LOCAL_SCHEDULE = "key-schedule.json"
LOCAL_PROPAGATION = 6  # workers on one machine re-read the files within 5 s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("rotate", "start a signing-key rotation now (the operator stages it)"),
                         ("status", "show the platform's signing keys and their times")):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("--platform", default=None,
                       help="VezaPlatform name (default: the namespace's only platform)")
        p.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
        p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
        p.add_argument("--keys-dir", type=Path, default=None,
                       help="a local keys directory (`veza up`: DATA_DIR/jwt-keys) instead of a cluster")
        if action == "rotate":
            p.add_argument("--propagation", type=int, default=LOCAL_PROPAGATION,
                           help=f"with --keys-dir: seconds a new key verifies before it signs "
                                f"(default {LOCAL_PROPAGATION})")
            p.add_argument("--overlap", type=int, default=900,
                           help="with --keys-dir: seconds a replaced key keeps verifying; at least the API's "
                                "access-token lifetime, VEZA_ACCESS_TTL_SECONDS (default 900)")
        if action == "status":
            p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")


def _api(kubeconfig: str | None) -> tuple[Any, str]:
    """A CustomObjectsApi and the kubeconfig context's namespace."""
    import kubernetes  # only this command needs the client: `veza chat` and friends never load it

    _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    namespace = ((active or {}).get("context") or {}).get("namespace") or "default"
    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    return kubernetes.client.CustomObjectsApi(client), namespace


def _platform(api: Any, namespace: str, name: str | None) -> dict[str, Any]:
    if name is not None:
        found: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return found
    items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    if len(items) != 1:
        names = ", ".join(i["metadata"]["name"] for i in items) or "none"
        raise SystemExit(f"veza keys: name the platform with --platform (platforms in {namespace}: {names})")
    only: dict[str, Any] = items[0]
    return only


def rotate(api: Any, namespace: str, name: str | None, now: datetime) -> str:
    platform = _platform(api, namespace, name)
    request = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, platform["metadata"]["name"],
                                       {"metadata": {"annotations": {ROTATE_ANNOTATION: request}}})
    return request


def describe(keys: dict[str, Any]) -> str:
    lines = [f"{'KID':<30} {'STATE':<10} {'PUBLISHED':<21} {'SIGNS FROM':<21} RETIRES"]
    for key in keys.get("keys") or []:
        lines.append(f"{key.get('kid', ''):<30} {key.get('state', ''):<10} {key.get('published', ''):<21} "
                     f"{key.get('activates', ''):<21} {key.get('retires', '') or '-'}")
    lines.append(f"next rotation: {keys.get('nextRotation') or 'on demand'}")
    lines.append(f"next change:   {keys.get('nextChange') or '-'}")
    return "\n".join(lines)


# -- a local keys directory (`veza up`) ----------------------------------------------------------


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)  # a worker reads the old file or the new one, whole


def rotate_local(directory: Path, propagation: int, overlap: int, *, say: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], datetime] | None = None) -> None:
    """Publish a new key, let it sign after `propagation`, retire the old one `propagation + overlap`
    later: the operator's stages, run here until the last one (a rotation under way is resumed)."""
    from veza_operator import keys  # the operator's schedule, as pure functions

    now = clock or (lambda: datetime.now(UTC).replace(microsecond=0))
    timing = keys.Timing(period=None, overlap=timedelta(seconds=overlap), propagation=timedelta(seconds=propagation))
    private: list[dict[str, Any]] = json.loads((directory / SIGNING_KEYS_FILE).read_text())["keys"]
    saved = directory / LOCAL_SCHEDULE
    schedule = (keys.Schedule.from_json(saved.read_text()) if saved.exists()
                else keys.Schedule.adopt([str(k["kid"]) for k in private], now(), timing.propagation + timing.overlap))
    under_way = any(k.retires is not None for k in schedule.keys) or schedule.pending(now()) is not None
    request: str | None = None if under_way else now().strftime("%Y-%m-%dT%H:%M:%SZ")
    while True:
        step = keys.advance(schedule, private, timing, now(), request=request)
        schedule, private = step.schedule, step.private_keys
        for name, text in secret_data(private).items():
            _write(directory / name, text)
        _write(saved, schedule.to_json())
        for stage in step.stages:
            say(stage.message)
        change = keys.next_change(schedule, timing, now())
        if change is None:
            return
        sleep(max(0.0, (change - now()).total_seconds()))


def _local_status(directory: Path) -> dict[str, Any]:
    from veza_operator import keys

    saved = directory / LOCAL_SCHEDULE
    if not saved.exists():
        return {}
    timing = keys.Timing(period=None, overlap=timedelta(0), propagation=timedelta(0))
    return keys.key_status(keys.Schedule.from_json(saved.read_text()), timing, datetime.now(UTC))


def run(args: argparse.Namespace) -> int:
    if args.keys_dir is not None:
        if args.action == "rotate":
            rotate_local(args.keys_dir, args.propagation, args.overlap)
            return 0
        local = _local_status(args.keys_dir)
        if not local:
            print(f"veza keys: no rotation has run in {args.keys_dir} yet", file=sys.stderr)
            return 1
        print(json.dumps(local, indent=2) if args.output == "json" else describe(local))
        return 0
    api, context_namespace = _api(args.kubeconfig)
    namespace = args.namespace or context_namespace
    if args.action == "rotate":
        request = rotate(api, namespace, args.platform, datetime.now(UTC))
        print(f"rotation requested ({ROTATE_ANNOTATION}={request}); the operator publishes a new key now, "
              "it signs after the propagation delay: see `veza keys status`")
        return 0
    platform = _platform(api, namespace, args.platform)
    keys = (platform.get("status") or {}).get("keys")
    if not keys:
        print(f"veza keys: {platform['metadata']['name']} reports no key schedule yet (no keyRotation in its "
              "spec and no rotation asked for)", file=sys.stderr)
        return 1
    print(json.dumps(keys, indent=2) if args.output == "json" else describe(keys))
    return 0
