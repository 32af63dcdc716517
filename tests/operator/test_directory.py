"""The API's directory follows the ChatRooms and StreamChannels: the operator declares, updates and removes them
in a real API process (against real PostgreSQL) with the platform's directory credential, no hand-made PUT."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import ISSUER, PASSWORD, write_keys
from tests.support.db import fresh_database
from tests.support.kube import KubeCluster
from tests.support.operator import (
    OperatorProcess,
    channel,
    condition,
    connections_secret,
    platform,
    room,
    wait_condition,
)
from tests.support.process import VezaProcess
from veza_core.keys import generate_signing_key
from veza_local.controlplane import wait_for
from veza_local.services import PostgresService, RedisService
from veza_operator import directory
from veza_operator import platform as platform_mod
from veza_operator.models import VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.settings import Settings


@pytest.fixture(scope="module")
async def directory_database(postgres: PostgresService) -> str:
    return await fresh_database(postgres, "directory")


@pytest.fixture
def dir_ns(kube: KubeCluster, operator_stepped_aside: None) -> Iterator[str]:
    name = kube.create_namespace("dir")
    yield name
    kube.delete_namespace(name)


def call(base: str, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"{base}{path}", method=method,  # noqa: S310 - loopback
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def user(base: str, email: str) -> dict[str, Any]:
    status, _ = call(base, "POST", "/api/v1/auth/register",
                     body={"email": email, "password": PASSWORD, "display_name": email.split("@")[0]})
    assert status == 202
    status, tokens = call(base, "POST", "/api/v1/auth/login", body={"email": email, "password": PASSWORD})
    assert status == 200, tokens
    return tokens


def rooms_of(base: str, token: str | None) -> dict[str, dict[str, Any]]:
    status, body = call(base, "GET", "/api/v1/admin/rooms", token)
    assert status == 200, body
    return {r["name"]: r for r in body["rooms"]}


def channels_of(base: str, token: str | None) -> set[str]:
    status, body = call(base, "GET", "/api/v1/admin/channels", token)
    assert status == 200, body
    return {c["name"] for c in body["channels"]}


def test_the_directory_follows_the_resources(kube: KubeCluster, operator_install: Path, dir_ns: str,
                                             directory_database: str, redis: RedisService, tmp_path: Path) -> None:
    ns = dir_ns
    # The platform's API will be a real process on loopback (kwok's pods serve nothing); the operator
    # reaches it there, and keeps trying until it answers.
    keys = tmp_path / "keys"
    write_keys(keys, [generate_signing_key()])
    api_env = {
        "VEZA_PLATFORM": "demo", "VEZA_DATABASE_URL": directory_database, "VEZA_REDIS_URL": redis.url,
        "VEZA_JWT_ISSUER": ISSUER, "VEZA_JWT_KEYS_DIR": str(keys), "VEZA_MAIL_DIR": str(tmp_path / "mail"),
        "VEZA_ARGON2_MEMORY_KIB": "8192", "VEZA_ARGON2_TIME_COST": "1",
        "VEZA_S3_ENDPOINT": "http://127.0.0.1:9", "VEZA_S3_BUCKET": "unused"}
    api = VezaProcess("api", api_env, tmp_path / "api.log")
    base = api.url
    env = {"VEZA_DIRECTORY_URL": base, "VEZA_DIRECTORY_RETRY_MAX_SECONDS": "1"}
    operator = OperatorProcess(operator_install, tmp_path / "operator.log", peering=None, namespaces=[ns],
                               extra_env=env).start()
    try:
        follow_resources(kube, ns, api, operator)
    finally:
        operator.stop()
        api.stop()


def follow_resources(kube: KubeCluster, ns: str, api: VezaProcess, operator: OperatorProcess) -> None:
    base = api.url
    # What an older operator made and nothing read: the platform's config ConfigMap, pruned now.
    old_labels = {"app.kubernetes.io/managed-by": "veza-operator", "veza.io/owner-kind": "VezaPlatform",
                  "veza.io/owner-name": "demo"}
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "data": {"publicURL": "http://veza.test"},
                "metadata": {"name": "demo-config", "namespace": ns, "labels": old_labels}})
    kube.apply(connections_secret(ns), platform(ns))
    secret = wait_for(lambda: kube.get("secret", "demo-directory", ns), timeout=60,
                      message="the platform's directory credential")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 32
    owners = secret["metadata"]["ownerReferences"]
    assert owners[0]["kind"] == "VezaPlatform" and owners[0]["controller"] is True
    deployment = wait_for(lambda: kube.get("deployment", "demo-api", ns), timeout=60, message="the API Deployment")
    container_env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert container_env["VEZA_DIRECTORY_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "demo-directory",
                                                                                  "key": "token"}
    wait_for(lambda: kube.get("configmap", "demo-config", ns) is None, timeout=60, message="the old ConfigMap pruned")

    api.env["VEZA_DIRECTORY_TOKEN"] = token
    api.start()
    owner, newcomer = user(base, "owner@dir.test"), user(base, "newcomer@dir.test")
    kube.apply(channel(ns, "radio", title="Radio Veza", renditions=[{"name": "opus-96", "codec": "opus",
                                                                     "bitrateKbps": 96}]),
               room(ns, "lobby", title="Lobby", channelRef={"name": "radio"}),
               room(ns, "staff", title="Staff", visibility="private",
                    members=[{"user": owner["user_id"], "role": "owner"}]))
    wait_for(lambda: {"lobby", "staff"} <= rooms_of(base, token).keys() and "radio" in channels_of(base, token),
             timeout=60, message="rooms and channel declared")
    listed = rooms_of(base, token)
    assert listed["lobby"]["title"] == "Lobby" and listed["lobby"]["channel"] == "radio"
    assert listed["staff"]["visibility"] == "private"

    # The member the CR lists sees the private room and may open it; someone else does not.
    mine = {r["name"] for r in call(base, "GET", "/api/v1/rooms", owner["access_token"])[1]["rooms"]}
    assert "staff" in mine
    assert call(base, "GET", "/api/v1/rooms/staff", owner["access_token"])[0] == 200
    assert call(base, "GET", "/api/v1/rooms/staff", newcomer["access_token"])[0] == 404
    # The web client's listen-along bindings come from the directory.
    config = call(base, "GET", "/web/config.json")[1]
    assert config["rooms"]["lobby"] == {"title": "Lobby", "channel": "radio"} and "staff" not in config["rooms"]
    assert config["channels"]["radio"] == {"title": "Radio Veza", "renditions": [{"name": "opus-96", "codec": "opus"}]}

    # The condition says so, and Ready is the workers' business alone.
    synced = wait_condition(kube, "chatroom", "staff", ns)
    found = wait_for(lambda: condition(kube.get("chatroom", "staff", ns), "DirectorySynced"), timeout=30,
                     message="DirectorySynced on the room")
    assert found["status"] == "True" and condition(synced)["status"] == "True"

    # A declaration the API refuses (a member that is no user id) is that resource's condition alone.
    kube.apply(room(ns, "odd", members=[{"user": "alice", "role": "member"}]))
    refused = wait_for(lambda: (c := condition(kube.get("chatroom", "odd", ns), "DirectorySynced"))
                       and c["status"] == "False" and c, timeout=60, message="the refusal in the condition")
    assert refused["reason"] == "Refused" and "404" in refused["message"]
    assert "odd" not in rooms_of(base, token)
    assert condition(kube.get("chatroom", "staff", ns), "DirectorySynced")["status"] == "True"
    kube.kubectl("delete", "chatroom", "odd", "-n", ns, "--wait=true")

    # Updates: title, visibility, members, binding.
    kube.apply(room(ns, "staff", title="Crew", visibility="private",
                    members=[{"user": newcomer["user_id"], "role": "owner"}]),
               room(ns, "lobby", title="Lobby", visibility="private",
                    members=[{"user": owner["user_id"], "role": "owner"}]))
    wait_for(lambda: rooms_of(base, token)["staff"]["title"] == "Crew"
             and rooms_of(base, token)["lobby"]["visibility"] == "private",
             timeout=60, message="updates reach the API")
    assert rooms_of(base, token)["lobby"]["channel"] is None
    assert call(base, "GET", "/api/v1/rooms/staff", owner["access_token"])[0] == 404
    assert call(base, "GET", "/api/v1/rooms/staff", newcomer["access_token"])[0] == 200
    assert call(base, "GET", "/api/v1/rooms/lobby", newcomer["access_token"])[0] == 404

    # Deleted resources leave the directory.
    kube.kubectl("delete", "chatroom", "lobby", "-n", ns, "--wait=true")
    kube.kubectl("delete", "streamchannel", "radio", "-n", ns, "--wait=true")
    wait_for(lambda: "lobby" not in rooms_of(base, token) and "radio" not in channels_of(base, token),
             timeout=60, message="deleted resources leave the directory")

    # A deletion the operator did not see happen is applied when it starts again.
    operator.stop()
    kube.kubectl("delete", "chatroom", "staff", "-n", ns, "--wait=true")
    assert "staff" in rooms_of(base, token)
    operator.start()
    wait_for(lambda: "staff" not in rooms_of(base, token), timeout=60,
             message="a deletion made while the operator was stopped")


def test_without_an_api_the_resources_stay_ready(kube: KubeCluster, operator_install: Path, dir_ns: str,
                                                 tmp_path: Path) -> None:
    """An API that does not answer (kwok's pods serve nothing) is a condition of its own, never Ready=False."""
    ns = dir_ns
    env = {"VEZA_DIRECTORY_URL": "http://127.0.0.1:9", "VEZA_DIRECTORY_RETRY_MAX_SECONDS": "1"}
    operator = OperatorProcess(operator_install, tmp_path / "operator.log", peering=None, namespaces=[ns],
                               extra_env=env).start()
    try:
        kube.apply(connections_secret(ns), platform(ns), room(ns, "lobby"))
        wait_condition(kube, "chatroom", "lobby", ns)
        found = wait_for(lambda: condition(kube.get("chatroom", "lobby", ns), "DirectorySynced"), timeout=30,
                         message="DirectorySynced on the room")
        assert found["status"] == "False" and found["reason"] == "ApiUnreachable"
        assert condition(kube.get("chatroom", "lobby", ns))["status"] == "True"
    finally:
        operator.stop()


# -- the pure parts ------------------------------------------------------------------------------

def test_declarations_from_the_specs() -> None:
    body = room("ns", "staff", title="Staff", visibility="private", channelRef={"name": "radio"},
                members=[{"user": "00000000-0000-0000-0000-000000000001", "role": "owner"}])
    worker_spec = {k: v for k, v in body["spec"].items() if k != "platformRef"}
    assert directory.declaration("ChatRoom", body) == {
        "title": "Staff", "visibility": "private", "channel": "radio",
        "members": [{"user": "00000000-0000-0000-0000-000000000001", "role": "owner"}],
        "spec": worker_spec, "placement": "pooled"}
    assert directory.declaration("ChatRoom", room("ns", "lobby")) == {
        "title": "lobby", "visibility": "public", "members": [], "channel": None, "spec": {},
        "placement": "pooled"}
    assert directory.declaration("StreamChannel", channel("ns", "radio")) == {
        "title": "radio", "visibility": "public", "renditions": [{"name": "mp3-128", "codec": "mp3"}]}
    assert directory.declaration("ChatRoom", room("ns", "bad", visibility="secret")) is None

    going = room("ns", "going")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    owners = {("ChatRoom", b["metadata"]["namespace"], b["metadata"]["name"]): b for b in
              (room("ns", "a"), room("ns", "b", platform_name="other"), room("other-ns", "c"), going)}
    owners[("StreamChannel", "ns", "radio")] = channel("ns", "radio")
    assert set(directory.desired(owners, "ns", "demo")) == {("room", "a"), ("channel", "radio")}


def test_the_operator_pods_reach_the_api_pods_only_when_placed() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    assert directory.api_ingress_policy(owner, Settings()) is None
    placed = Settings(operator_namespace="veza-system",
                      operator_pod_labels=("app.kubernetes.io/name=veza", "app.kubernetes.io/component=operator"))
    policy = directory.api_ingress_policy(owner, placed)
    assert policy is not None
    assert policy["spec"]["podSelector"]["matchLabels"] == {"veza.io/platform": "demo",
                                                            "app.kubernetes.io/component": "api"}
    peer = policy["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "veza-system"}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    with pytest.raises(ValueError, match="key=value"):
        Settings.from_env({"VEZA_OPERATOR_POD_LABELS": "novalue"})


def test_the_api_gets_the_credential_and_the_migration_job_does_not() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    spec = VezaPlatformSpec.model_validate(platform("ns")["spec"])
    children = platform_mod.build_children(owner, spec)
    env_of = {c["metadata"]["name"]: {e["name"] for e in c["spec"]["template"]["spec"]["containers"][0]["env"]}
              for c in children if c["kind"] in ("Deployment", "Job")}
    job = platform_mod.migration_job_name("demo", spec)
    assert "VEZA_DIRECTORY_TOKEN" in env_of["demo-api"] and "VEZA_DIRECTORY_TOKEN" not in env_of[job]
    assert "VEZA_DIRECTORY_TOKEN" not in env_of["demo-chat-pool"], "only the API holds the credential"
    assert all(c["kind"] != "ConfigMap" for c in children)
    made = directory.secret(owner)
    assert made["metadata"]["ownerReferences"][0]["uid"] == "u" and len(made["stringData"]["token"]) >= 32
    assert made["stringData"]["token"] != directory.secret(owner)["stringData"]["token"]


def test_the_condition_keeps_its_transition_time() -> None:
    first = directory.condition(directory.Outcome(False, "ApiUnreachable", "m"), 1, None)
    same = directory.condition(directory.Outcome(False, "ApiUnreachable", "m"), 2, [first])
    assert same["lastTransitionTime"] == first["lastTransitionTime"] and same["observedGeneration"] == 2
    assert directory.condition(directory.Outcome(True, "Declared", "m"), 2, [first])["status"] == "True"
