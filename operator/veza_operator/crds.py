"""CustomResourceDefinitions generated from the spec models (`veza_core.specs`, `models.py`).

The kinds, their names and printer columns come from the registry (`kinds.OWNERS`).

`veza crds --write` regenerates `crds/*.yaml` and the chart's copies; a test
fails when the committed files are stale.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from veza_core.specs import API_RULES

from .kinds import OWNERS, OwnerKind
from .models import DNS_LABEL, GROUP, VERSION

KINDS = OWNERS  # the custom resources a CRD is generated for
MAX_NAME_LENGTH = 48


# -- status schema (shared by the three kinds) ---------------------------------------

CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One aspect of the resource's state (metav1.Condition).",
    "required": ["type", "status", "reason", "message", "lastTransitionTime"],
    "properties": {
        "type": {"type": "string",
                 "description": "Ready, Progressing, Degraded, or their kstatus twins Reconciling and Stalled."},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Condition status."},
        "reason": {"type": "string", "description": "CamelCase reason for the last transition."},
        "message": {"type": "string", "description": "Human-readable details."},
        "lastTransitionTime": {"type": "string", "format": "date-time",
                               "description": "When the status last changed."},
        "observedGeneration": {"type": "integer", "description": "Generation this condition was computed for."},
    },
}


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


KEYS_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object", "description": "The JWT signing keys and their rotation (times in UTC, RFC 3339).",
    "properties": {
        "active": _text("Key id (kid) of the key that signs."),
        "request": _text("The last veza.io/rotate-keys request carried out."),
        "nextRotation": _text("When the period makes the next key due; empty: on demand only, or one is on "
                              "its way."),
        "nextChange": _text("When the keys Secret changes next (an activation, a retirement, a rotation)."),
        "keys": {"type": "array", "description": "Every key of the Secret.", "items": {
            "type": "object", "properties": {
                "kid": _text("Key id."),
                "state": _text("published (verifies, signs from activates), signing, verifying (signed "
                               "before; until retires)."),
                "published": _text("When the key joined the Secret."),
                "activates": _text("When it signs (or signed) from."),
                "retires": _text("When it leaves the Secret; empty while it is the newest key."),
            }}},
    },
}


def status_schema(kind: OwnerKind) -> dict[str, Any]:
    props: dict[str, Any] = {
        "observedGeneration": {"type": "integer", "description": "The .metadata.generation last reconciled."},
        "conditions": {"type": "array", "description": "Ready, Progressing and Degraded (and Reconciling, Stalled).",
                       "items": CONDITION_SCHEMA, "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"]},
        "url": {"type": "string", "description": "Public URL end clients use."},
    }
    if kind.scalable:
        props |= {
            "replicas": {"type": "integer", "description": "Current worker replicas."},
            "readyReplicas": {"type": "integer", "description": "Worker replicas ready to serve."},
            "selector": {"type": "string", "description": "Label selector of the workers (scale subresource)."},
        }
        if kind.kind == "ChatRoom":
            props |= {
                "placement": {"type": "string", "enum": ["Pooled", "Promoting", "Dedicated", "Demoting"],
                              "description": "Where the room's workers run: the chat pool (Pooled), its own "
                                             "Deployment (Dedicated), or moving between them."},
                "placementChangedAt": {"type": "string", "format": "date-time",
                                       "description": "When the placement last changed (the autopilot's "
                                                      "cool-down counts from it)."},
                "poolShard": {"type": "integer", "description": "The chat pool shard the room's route leads to "
                                                                "(while not Dedicated)."},
            }
    else:
        props |= {
            "rooms": {"type": "integer", "description": "ChatRooms that reference this platform."},
            "channels": {"type": "integer", "description": "StreamChannels that reference this platform."},
            "keysSecret": {"type": "string", "description": "Secret holding the JWT signing keys."},
            "keys": KEYS_STATUS_SCHEMA,
            "migratedVersion": {"type": "string", "description": "Worker version whose migrations ran."},
            "chatPool": {"type": "object", "description": "The chat pool serving the pooled rooms.", "properties": {
                "replicas": {"type": "integer", "description": "Pool worker replicas (every shard)."},
                "readyReplicas": {"type": "integer", "description": "Pool workers ready to serve (every shard)."},
                "rooms": {"type": "integer", "description": "Rooms the pool serves."},
                "shards": {"type": "array", "description": "Each shard of the pool.", "items": {
                    "type": "object", "properties": {
                        "name": {"type": "string", "description": "The shard's Deployment and Service."},
                        "replicas": {"type": "integer", "description": "The shard's worker replicas."},
                        "readyReplicas": {"type": "integer", "description": "The shard's workers ready to serve."},
                        "rooms": {"type": "integer", "description": "Pooled rooms routed to the shard."}}}}}},
            "workerImage": {"type": "string",
                            "description": "Image (repository:tag) the API, rooms and channels run: the newest "
                                           "whose migration Job succeeded. After a spec.image change the workers "
                                           "stay on it until the new image's migrations have run."},
        }
    return {"type": "object", "description": f"Observed state of the {kind.kind}.", "properties": props}


# -- pydantic JSON schema -> structural OpenAPI v3 ------------------------------------

_DROP = {"title", "$defs"}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").split("/")[-1]]
        merged = _structural(target, defs)
        if "description" in schema:  # the field's own description wins over the class docstring
            merged["description"] = schema["description"]
        if "default" in schema:
            merged["default"] = schema["default"]
        if API_RULES in schema:
            merged[API_RULES] = schema[API_RULES]
        return merged
    if "anyOf" in schema:  # Optional[X]: X, and "absent" stands for null
        options = [o for o in schema.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in schema: {options}")
        inner = _structural(options[0], defs)
        if schema.get("default", "unset") is None:
            schema.pop("default")
        return inner | {k: v for k, v in schema.items() if k not in _DROP}
    out = {k: v for k, v in schema.items() if k not in _DROP}
    if "properties" in out:
        out["properties"] = {name: _structural(p, defs) for name, p in out["properties"].items()}
        _apply_api_rules(out)
    if isinstance(out.get("items"), dict):
        out["items"] = _structural(out["items"], defs)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"], defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def _apply_api_rules(schema: dict[str, Any]) -> None:
    """What the API server enforces beyond what a worker accepts (`veza_core.specs.api`): tighter
    bounds, required fields, and fields a CR leaves absent."""
    for name, prop in schema["properties"].items():
        rules = prop.pop(API_RULES, None)
        if rules is None:
            continue
        if any(k in rules["schema"] for k in ("minimum", "maximum")):
            for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                prop.pop(bound, None)
        prop.update(rules["schema"])
        if not rules["default"]:
            prop.pop("default", None)
        if rules["required"] and name not in schema.get("required", []):
            schema["required"] = [*schema.get("required", []), name]


def _api_default(field: Any) -> bool:
    """Whether the CRD gives the field its model default (see `veza_core.specs.api`)."""
    extra = field.json_schema_extra
    rules = extra.get(API_RULES) if isinstance(extra, dict) else None
    return rules is None or bool(rules["default"])


def _fill_factory_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """pydantic leaves out defaults made by default_factory; Kubernetes needs them to default fields.

    A nested object defaults to its full default value: the API server validates defaults
    (CEL rules included) before it would apply the nested ones.
    """
    for name, field in model.model_fields.items():
        prop = schema.get("properties", {}).get(field.alias or name)
        if prop is None:
            continue
        sub = _model_of(field.annotation)
        if field.default_factory is not None and "default" not in prop and _api_default(field):
            value = field.get_default(call_default_factory=True)
            prop["default"] = _dump(value)
        if sub is not None:
            target = prop["items"] if prop.get("type") == "array" else prop
            _fill_factory_defaults(target, sub)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (found := _model_of(arg)) is not None:
            return found
    return None


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True, by_alias=True)
    return value


def spec_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    _fill_factory_defaults(schema, model)
    _check_descriptions(schema, model.__name__)
    return schema


def _check_descriptions(schema: dict[str, Any], path: str) -> None:
    """Every field documented, so that `kubectl explain` documents the API."""
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description"):
            raise ValueError(f"{path}.{name} has no description")
        _check_descriptions(prop, f"{path}.{name}")
        if isinstance(prop.get("items"), dict):
            _check_descriptions(prop["items"], f"{path}.{name}[]")


# -- the CRDs -----------------------------------------------------------------------------

def crd(kind: OwnerKind) -> dict[str, Any]:
    columns = [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        *kind.columns,
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    subresources: dict[str, Any] = {"status": {}}
    if kind.scalable:
        subresources["scale"] = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                                 "labelSelectorPath": ".status.selector"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "veza"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind.kind, "plural": kind.plural, "singular": kind.singular,
                      "shortNames": list(kind.short_names), "categories": ["veza"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "additionalPrinterColumns": columns,
                "subresources": subresources,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": (kind.spec_model.__doc__ or kind.kind).strip(),
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "API version of this object."},
                        "kind": {"type": "string", "description": "Kind of this object."},
                        # Child objects are named "<prefix>-<name>": names must stay short DNS labels.
                        "metadata": {"type": "object", "properties": {"name": {
                            "type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": DNS_LABEL}}},
                        "spec": spec_schema(kind.spec_model) | {
                            "description": (kind.spec_model.__doc__ or "").strip()},
                        "status": status_schema(kind),
                    },
                }},
            }],
        },
    }


def peering_crd(plural: str, kind: str, scope: str) -> dict[str, Any]:
    """kopf's peering resource: operator replicas keep one of them active through it."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev", "labels": {"app.kubernetes.io/part-of": "veza"}},
        "spec": {"group": "kopf.dev", "scope": scope,
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "description": "Keep-alive records of operator replicas, used to keep one active.",
                     "properties": {"status": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                         "description": "One entry per operator replica: its priority and last keep-alive."}},
                 }}}]},
    }


PEERING_CRDS = (("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"), ("kopfpeerings", "KopfPeering", "Namespaced"))
HEADER = "# Generated from operator/veza_operator/crds.py by `veza crds --write`. Do not edit.\n"


def render(kind: OwnerKind) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def all_crds() -> dict[str, str]:
    """File name -> YAML of every CRD the operator needs."""
    files = {f"{kind.crd_name}.yaml": render(kind) for kind in KINDS}
    for plural, kind_name, scope in PEERING_CRDS:
        files[f"{plural}.kopf.dev.yaml"] = HEADER + yaml.safe_dump(peering_crd(plural, kind_name, scope),
                                                                   sort_keys=False, width=120)
    return files


def crd_files(root: Path) -> dict[Path, str]:
    """Every generated file: the top-level crds/ folder and the Helm chart's copy."""
    files: dict[Path, str] = {}
    for name, text in all_crds().items():
        files[root / "crds" / name] = text
        files[root / "charts" / "veza" / "crds" / name] = text
    return files
