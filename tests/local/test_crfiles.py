"""CR files are validated as the Kubernetes API server validates them: same errors, same wording.

The expected messages below are what kube-apiserver answered for these objects
(`kubectl create --dry-run=server`); `test_same_errors_as_the_api_server` asks a real
one again (the local control plane, or KUBECONFIG's cluster).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import KubeCluster
from tests.support.up import EXAMPLES, ROOT
from veza_local import crfiles

SKIPPED = crfiles.SKIPPED_RULES


def room(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "metadata": {"name": name},
            "spec": {"platformRef": {"name": "demo"}, **spec}}


def channel(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "veza.io/v1alpha1", "kind": "StreamChannel", "metadata": {"name": name},
            "spec": {"platformRef": {"name": "demo"}, "source": {"type": "live"}, **spec}}


PLATFORM = {"apiVersion": "veza.io/v1alpha1", "kind": "VezaPlatform", "metadata": {"name": "p"}, "spec": {
    "connections": {"postgres": {"uriSecretRef": {"name": "s", "key": "k"}}, "redis": {},
                    "nats": {"url": "http://x"}, "s3": {"bucket": "B"}},
    "ingress": {"host": "veza.example.com"},
    "auth": {"accessTokenTTLSeconds": 900, "refreshTokenTTLSeconds": 600}}}

# (object, the API server's error lines for it)
CASES: list[tuple[dict[str, Any], set[str]]] = [
    (room("too-big", limits={"maxMessageBytes": 100000}),
     {"spec.limits.maxMessageBytes: Invalid value: 100000: spec.limits.maxMessageBytes in body should be less "
      "than or equal to 65536"}),
    (room("private-no-owner", visibility="private"),
     {"spec: Invalid value: a private room needs at least one member with role owner"}),
    (room("bad-enum", visibility="secret"),
     {'spec.visibility: Unsupported value: "secret": supported values: "public", "private"', SKIPPED}),
    ({**room("no-platform"), "spec": {"title": "x"}}, {"spec.platformRef: Required value", SKIPPED}),
    (room("long-title", title="x" * 201), {"spec.title: Too long: may not be more than 200 bytes", SKIPPED}),
    (room("bad-ref", platformRef={"name": "Demo_1"}),
     {"spec.platformRef.name: Invalid value: \"Demo_1\": spec.platformRef.name in body should match "
      "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"}),
    (room("autoscale", replicas=9, autoscaling={"enabled": True, "minReplicas": 3, "maxReplicas": 2}),
     {"spec: Invalid value: replicas must lie within the autoscaling bounds",
      "spec.autoscaling: Invalid value: minReplicas must not exceed maxReplicas"}),
    (channel("dup", source={"type": "playlist"}, renditions=[{"name": "a", "codec": "mp3"},
                                                            {"name": "a", "codec": "opus"}]),
     {"spec: Invalid value: rendition names must be unique",
      "spec.source: Invalid value: type playlist needs playlist"}),
    (channel("empty-renditions", renditions=[]),
     {"spec.renditions: Invalid value: 0: spec.renditions in body should have at least 1 items"}),
    (channel("no-delivery", delivery={"progressive": False, "hls": {"enabled": False}}),
     {"spec: Invalid value: enable progressive or HLS delivery"}),
    (channel("long-parts", delivery={"hls": {"targetDurationSeconds": 1, "partDurationSeconds": 0.75}}),
     {"spec.delivery.hls: Invalid value: partDurationSeconds must be at most half of targetDurationSeconds"}),
    (PLATFORM,
     {"spec.connections.s3.bucket: Invalid value: \"B\": spec.connections.s3.bucket in body should be at least "
      "3 chars long",
      "spec.connections.nats.url: Invalid value: \"http://x\": spec.connections.nats.url in body should match "
      "'^(nats|tls)://'",
      "spec.auth: Invalid value: refreshTokenTTLSeconds must exceed accessTokenTTLSeconds",
      "spec.connections.redis: Invalid value: set exactly one of url and urlSecretRef"}),
]


def error_lines(message: str) -> tuple[str, set[str]]:
    """("The ChatRoom "x" is invalid", {lines}) from a single-line or a "* "-list message."""
    head, _, rest = message.partition(": ")
    rest = rest.strip()
    if rest.startswith("* ") or "\n* " in rest:
        return head, {line[2:].strip() for line in rest.splitlines() if line.startswith("* ")}
    return head, {rest}


def ours(doc: dict[str, Any]) -> str:
    with pytest.raises(crfiles.CRError) as err:
        crfiles.validate(doc)
    return str(err.value)


@pytest.mark.parametrize(("doc", "expected"), CASES, ids=[c[0]["metadata"]["name"] for c in CASES])
def test_messages_match_the_api_server(doc: dict[str, Any], expected: set[str]) -> None:
    head, lines = error_lines(ours(doc))
    assert head == f'The {doc["kind"]} "{doc["metadata"]["name"]}" is invalid'
    assert lines == expected


def test_defaults_are_applied_and_unknown_fields_pruned() -> None:
    warnings: list[str] = []
    res = crfiles.validate(room("ok", colour="blue"), "room.yaml", warnings)
    assert res.spec["limits"] == {"maxMembers": 10000, "maxMessageBytes": 4096, "messagesPerMinute": 60}
    assert res.spec["visibility"] == "public" and res.spec["replicas"] == 1
    assert "colour" not in res.spec
    assert warnings == ['room.yaml: ChatRoom "ok": unknown field "spec.colour"']


def test_examples_are_valid() -> None:
    crs = crfiles.load([EXAMPLES])
    assert [p.name for p in crs.platforms] == ["demo"] and "veza-connections" in crs.secrets


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ChatRoom\nspec:\n  title: [unclosed\n")
    with pytest.raises(crfiles.CRError, match=rf"^{bad}:\d+:\d+: invalid YAML"):
        crfiles.load([bad])


def test_wrong_api_version(tmp_path: Path) -> None:
    f = tmp_path / "room.yaml"
    f.write_text(json.dumps({**room("x"), "apiVersion": "veza.io/v1"}))
    with pytest.raises(crfiles.CRError, match=r'no matches for kind "ChatRoom" in version "veza\.io/v1"'):
        crfiles.load([f])


@pytest.mark.kube
def test_same_errors_as_the_api_server(kube: KubeCluster) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=veza-tests",
                 "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/chatrooms.veza.io",
                 "crd/streamchannels.veza.io", "crd/vezaplatforms.veza.io")
    for doc, _ in CASES:
        result = kube.run("kubectl", "create", "--dry-run=server", "-n", "default", "-f", "-",
                          input=json.dumps(doc), check=False)
        assert result.returncode != 0, doc
        head, theirs = error_lines(result.stderr.strip().removeprefix("Error from server (Invalid): "))
        # The scale subresource adds an "accessor error" line for a mistyped replicas; not a schema rule.
        theirs = {line for line in theirs if "accessor error" not in line}
        assert error_lines(ours(doc)) == (head, theirs), doc["metadata"]["name"]
