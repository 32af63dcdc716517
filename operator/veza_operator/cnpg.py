"""A platform whose PostgreSQL is a CloudNativePG Cluster: is that Cluster healthy?

The Cluster is read, never written: CloudNativePG owns it. Its `Ready` condition (which
CloudNativePG derives from `status.phase`: True only in "Cluster in healthy state") says whether it
serves; a Cluster without conditions yet is judged by its phase. While it is missing or not healthy
the platform reports `PostgresNotReady`, and the kopf watch on Clusters (`kinds.REFERENCED`,
`handlers.py`) reconciles the platforms naming one whenever it changes, so the platform recovers
by itself. The connection itself is wired by `wiring.py` from the Cluster's Secret and Services.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .conditions import Health
from .controller import Context, Key
from .models import VezaPlatformSpec

KIND = "Cluster"  # postgresql.cnpg.io/v1, in `kinds.API`
API = "postgresql.cnpg.io/v1"
CLUSTER_LABEL = "cnpg.io/cluster"  # on every instance pod of a Cluster, primary and replicas
PORT = 5432
HEALTHY_PHASE = "Cluster in healthy state"
# Phases CloudNativePG leaves only after someone acts: the platform is Degraded (kstatus: Stalled), not waiting.
STUCK_PHASES = frozenset({
    "Cluster is unrecoverable and needs manual intervention",
    "Waiting for user action",
    "Invalid cluster definition",
    "Cluster cannot proceed to reconciliation due to an unknown plugin being required",
    "Cluster cannot proceed to reconciliation due to an error while interacting with plugins",
    "Cluster has incomplete or invalid image catalog",
})
# How often a platform looks again at a Cluster missing from the store (not there yet, or not watched: the API
# was installed after the operator started); a watched Cluster's changes reconcile it at once.
RECHECK_SECONDS = 10.0


def cluster_health(cluster: dict[str, Any] | None, name: str) -> Health | None:
    """What a Cluster's status means for the platform: None when healthy, else PostgresNotReady."""
    if cluster is None:
        return Health(False, "PostgresNotReady", f"CloudNativePG Cluster {name} not found in the platform's "
                                                 "namespace; create it, or fix connections.postgres.cluster.name.",
                      progressing=True)
    status = cluster.get("status") or {}
    phase = status.get("phase") or ""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    healthy = ready.get("status") == "True" if ready is not None else phase == HEALTHY_PHASE
    if healthy:
        return None
    said = phase or "no phase reported yet"
    if status.get("phaseReason"):
        said += f" ({status['phaseReason']})"
    stuck = phase in STUCK_PHASES
    return Health(False, "PostgresNotReady", f"CloudNativePG Cluster {name} is not healthy: {said}.",
                  progressing=not stuck, degraded=stuck)


def named_cluster(platform: dict[str, Any]) -> str | None:
    """The Cluster a VezaPlatform body names (read from the raw body: an invalid spec may still name one)."""
    postgres = (((platform.get("spec") or {}).get("connections") or {}).get("postgres")) or {}
    name = (postgres.get("cluster") or {}).get("name")
    return name if isinstance(name, str) else None


def platforms_naming(owners: dict[Key, dict[str, Any]], namespace: str, cluster: str) -> list[Key]:
    """The VezaPlatforms of `namespace` whose PostgreSQL is the Cluster `cluster`."""
    return [key for key, body in owners.items()
            if key[0] == "VezaPlatform" and key[1] == namespace and named_cluster(body) == cluster]


@dataclass(frozen=True)
class PostgresCheck:
    health: Health | None  # None: no Cluster named, or it is healthy
    found: bool  # the Cluster exists: the children can be applied (its Secret is the only thing they need of it)


async def check_postgres(ctx: Context, key: Key, spec: VezaPlatformSpec) -> PostgresCheck:
    """The named Cluster's health, from the store while the operator watches Clusters; asked of the API server
    otherwise (not there yet, or the CloudNativePG CRDs installed after the operator started), and asked again
    later, since no event will say when it appears or heals."""
    ref = spec.connections.postgres.cluster
    if ref is None:
        return PostgresCheck(None, found=True)
    if not await ctx.capability(KIND):
        ctx.requeue(key, ctx.capability_ttl)
        return PostgresCheck(Health(
            False, "PostgresNotReady", f"connections.postgres.cluster names CloudNativePG Cluster {ref.name}, but "
                                       f"the cluster does not serve {API} Clusters; install CloudNativePG.",
            degraded=True), found=False)
    cluster = ctx.store.children.get((KIND, key[1], ref.name))
    if cluster is not None:
        return PostgresCheck(cluster_health(cluster, ref.name), found=True)
    cluster = await ctx.client.get(KIND, key[1], ref.name)
    health = cluster_health(cluster, ref.name)
    if health is not None:
        ctx.requeue(key, RECHECK_SECONDS)
    return PostgresCheck(health, found=cluster is not None)


def explain_refusal(spec: VezaPlatformSpec, refused: Health, postgres: Health | None) -> Health:
    """A refusal to apply the children, said in terms of the Cluster when its Secret is what is missing or
    unusable: CloudNativePG has yet to create it, or the Cluster does not label it for the platform."""
    ref = spec.connections.postgres.cluster
    if ref is None or ref.app_secret not in refused.message:
        return refused
    if refused.reason == "SecretNotFound" and postgres is not None:
        return replace(postgres, message=f"{postgres.message} {refused.message}")
    if refused.reason == "SecretNotUsable":
        return replace(refused, message=f"{refused.message} CloudNativePG copies the label onto {ref.app_secret} "
                                        f"from the Cluster's spec.inheritedMetadata.labels.")
    return refused
