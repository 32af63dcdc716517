"""What the operator refuses to do for whoever edits Veza resources (it must not be a confused deputy).

A resource author may be allowed to edit VezaPlatforms, ChatRooms and StreamChannels and nothing
else, while the operator may create Deployments, mount Secrets and write Ingresses. So the operator
runs only images from the repositories its settings allow, uses a Secret a spec names only when the
Secret is labelled for the platform (`veza.io/usable-by=<platform>`), writes only the Ingress
annotations its settings allow, and never takes over an object it did not create. What it refuses
is reported in the resource's status; nothing of the refused spec reaches the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .conditions import Health, name_conflict
from .controller import Context, Key
from .models import Image, VezaPlatformSpec
from .naming import USABLE_BY
from .settings import Settings


@dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, a condition reason
    message: str

    def health(self, prefix: str = "") -> Health:
        return Health(False, self.reason, prefix + self.message, degraded=True)


def repository_allowed(repository: str, allowed: Iterable[str]) -> bool:
    """Exact repositories, or every repository under an entry ending in '/'."""
    return any(repository == entry or (entry.endswith("/") and repository.startswith(entry)) for entry in allowed)


def platform_refusal(spec: VezaPlatformSpec, workers: Image, settings: Settings) -> Refusal | None:
    """The spec's image (its migration Job), the image the workers run and the Ingress annotations."""
    for image in (spec.image, workers):
        if not repository_allowed(image.repository, settings.allowed_image_repositories):
            return Refusal("ImageNotAllowed", f"Image repository {image.repository!r} is not allowed by the operator "
                                              f"(allowed: {', '.join(settings.allowed_image_repositories)}).")
    refused = sorted(key for key in spec.ingress.annotations
                     if not any(fnmatchcase(key, p) for p in settings.ingress_annotations_allowed)
                     or any(fnmatchcase(key, p) for p in settings.ingress_annotations_denied))
    if refused:
        return Refusal("AnnotationNotAllowed", f"Ingress annotation(s) not allowed by the operator: "
                                               f"{', '.join(refused)}.")
    return None


def secrets_in(manifests: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names of the Secrets the manifests make pods or controllers read: secretKeyRefs, secret volumes
    (also projected), Ingress TLS. Read from what is built, so no reference escapes the check."""
    found: set[str] = set()

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, dict):
            if key in ("secretKeyRef", "secret", "tls"):
                name = value.get("secretName") or (value.get("name") if key != "tls" else None)
                if isinstance(name, str):
                    found.add(name)
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)

    for manifest in manifests:
        walk(manifest, None)
    return found


def usable(meta: Mapping[str, Any], platform: str, platform_uid: str) -> bool:
    """A Secret labelled for the platform, or one the platform created (its JWT keys, owned by it)."""
    if (meta.get("labels") or {}).get(USABLE_BY) == platform:
        return True
    return any(ref.get("controller") and ref.get("uid") == platform_uid for ref in meta.get("ownerReferences") or [])


# How long what a Secret's metadata said is trusted (`Context.secrets_seen`): bursts of reconciles (a
# thousand rooms created at once) make a handful of reads, not a thousand.
SECRET_TTL = 30.0


async def secret_refusal(ctx: Context, namespace: str, names: set[str], platform: str, platform_uid: str
                         ) -> Refusal | None:
    """Missing Secrets, then Secrets not labelled for the platform; only their metadata is ever read."""
    missing, foreign = [], []
    for name in sorted(names):
        seen = ctx.secrets_seen.get((namespace, name))
        if seen is None or time.monotonic() - seen[0] >= SECRET_TTL:
            meta = await ctx.client.get_metadata("Secret", namespace, name)
            if meta is None:
                ctx.secrets_seen.pop((namespace, name), None)
                missing.append(name)
                continue
            seen = (time.monotonic(), {k: meta.get(k) for k in ("labels", "ownerReferences")})
            ctx.secrets_seen[(namespace, name)] = seen
        if not usable(seen[1], platform, platform_uid):
            foreign.append(name)
    if missing:
        return Refusal("SecretNotFound", f"Secret(s) not found: {', '.join(missing)}.")
    if foreign:
        return Refusal("SecretNotUsable", f"Secret(s) not labelled {USABLE_BY}={platform}: {', '.join(foreign)} "
                                          "(a Secret a spec names is used only when labelled for its platform).")
    return None


async def apply_admitted(ctx: Context, key: Key, kind: str, children: list[dict[str, Any]], secrets: set[str],
                         platform: str, platform_uid: str) -> Health | None:
    """Apply `children` unless a Secret of `secrets` is missing or not the platform's, or a child's name is held
    by an object the operator did not create: then nothing is applied, the resource is looked at again later
    (neither Secrets nor foreign objects are watched) and the health to report is returned."""
    refusal = await secret_refusal(ctx, key[1], secrets, platform, platform_uid)
    if refusal is not None:
        ctx.requeue(key, 10.0)
        return refusal.health()
    conflicts = await ctx.sync_children(key, children)
    if conflicts:
        ctx.requeue(key, 30.0)
        return name_conflict(conflicts, kind)
    return None
