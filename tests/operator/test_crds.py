"""The CRDs are generated from the models, committed up to date, and enforced by the API server."""

from __future__ import annotations

import pytest
import yaml

from tests.support.kube import KubeCluster
from tests.support.operator import REPO, channel, platform, room
from veza_operator.crds import KINDS, crd_files


def test_committed_crds_and_chart_copies_are_up_to_date() -> None:
    stale = [str(path.relative_to(REPO)) for path, text in crd_files(REPO).items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"regenerate with `veza crds --write`: {stale}"


def test_every_field_is_described_and_kinds_are_discoverable() -> None:
    for kind in KINDS:
        crd = yaml.safe_load((REPO / "crds" / f"{kind.crd_name}.yaml").read_text())
        names = crd["spec"]["names"]
        assert names["categories"] == ["veza"]
        assert names["shortNames"] and not set(names["shortNames"]) & {"sc", "cr", "po", "svc", "ns", "pv"}
        version = crd["spec"]["versions"][0]
        assert "status" in version["subresources"]
        assert ("scale" in version["subresources"]) == kind.scalable

        def walk(schema: dict, path: str) -> None:
            for name, prop in (schema.get("properties") or {}).items():
                if path == "" and name == "metadata":
                    continue  # the API server allows no description on metadata
                assert prop.get("description"), f"{path}.{name} has no description"
                walk(prop, f"{path}.{name}")
            if isinstance(schema.get("items"), dict):
                walk(schema["items"], f"{path}[]")

        walk(version["schema"]["openAPIV3Schema"], "")


@pytest.mark.kube
@pytest.mark.parametrize(("manifest", "message"), [
    (room("default", "r1", visibility="private"), "a private room needs at least one member with role owner"),
    (room("default", "r2", replicas=500), "should be less than or equal to 100"),
    (room("default", "r3", limits={"maxMessageBytes": 1}), "should be greater than or equal to 16"),
    (room("default", "r4", autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
     "minReplicas must not exceed maxReplicas"),
    (channel("default", "c1", renditions=[{"name": "a", "codec": "mp3"}, {"name": "a", "codec": "opus"}]),
     "rendition names must be unique"),
    (channel("default", "c2", renditions=[{"name": "a", "codec": "flac"}]), "Unsupported value"),
    (channel("default", "c3", source={"type": "playlist"}), "type playlist needs playlist"),
    (channel("default", "c5", renditions=[{"name": "hls", "codec": "mp3"}]), "are reserved paths"),
    (channel("default", "c4", delivery={"hls": {"targetDurationSeconds": 1, "partDurationSeconds": 0.75}}),
     "partDurationSeconds must be at most half of targetDurationSeconds"),
    (platform("default", "p1", auth={"accessTokenTTLSeconds": 3600, "refreshTokenTTLSeconds": 600}),
     "refreshTokenTTLSeconds must exceed accessTokenTTLSeconds"),
    ({**room("default", "Bad_Name")}, "metadata.name"),
    (platform("default", "p2", networkPolicies={"frontDoorNamespaceSelector": {
        "matchExpressions": [{"key": "edge", "operator": "In"}]}}),
     "In and NotIn need values; Exists and DoesNotExist take none"),
    (platform("default", "p3", gateway={"name": "Public_Gateway"}), "spec.gateway.name"),
])
def test_api_server_rejects_invalid_resources(kube: KubeCluster, operator_install: object, manifest: dict,
                                              message: str) -> None:
    result = kube.run("kubectl", "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(manifest),
                      check=False)
    assert result.returncode != 0, "the API server accepted an invalid resource"
    assert message in result.stderr, result.stderr


@pytest.mark.kube
def test_defaults_are_applied_by_the_api_server(kube: KubeCluster, operator_install: object) -> None:
    out = kube.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-",
                       input=yaml.safe_dump(channel("default", "defaults")))
    spec = yaml.safe_load(out)["spec"]
    assert spec["renditions"] == [{"name": "mp3-128", "codec": "mp3", "bitrateKbps": 128}]
    assert spec["delivery"] == {"progressive": True,
                                "hls": {"enabled": True, "targetDurationSeconds": 2, "archive": True}}
    assert spec["replicas"] == 1 and spec["visibility"] == "public"


@pytest.mark.kube
def test_platform_defaults_keep_ingresses_and_name_no_ingress_controller(kube: KubeCluster,
                                                                         operator_install: object) -> None:
    out = kube.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-",
                       input=yaml.safe_dump(platform("default", "defaults")))
    spec = yaml.safe_load(out)["spec"]
    assert spec["ingress"]["enabled"] is True and "gateway" not in spec
    assert spec["networkPolicies"]["frontDoorNamespaceSelector"] == {
        "matchLabels": {"veza.io/front-door": "true"}, "matchExpressions": []}


@pytest.mark.kube
def test_kubectl_explain_documents_the_api(kube: KubeCluster, operator_install: object) -> None:
    out = kube.kubectl("explain", "chatroom.spec.limits.messagesPerMinute")
    assert "Messages one user may send per minute." in out
