"""`veza_core.bus.connect` signs in with the worker's settings: the variables, a user and password against a real
nats-server running examples/nats/authorization.conf, TLS verified against a given CA, and a .creds file's JWT and
nonce signature."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import nats as nats_py
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from nats.aio.msg import Msg
from pydantic import ValidationError

from tests.support.chat import NATS_PASSWORDS as PASSWORDS
from tests.support.chat import authorized_nats
from veza_chat.settings import ChatSettings
from veza_core import bus
from veza_local.services import NatsService
from veza_stream.settings import StreamSettings


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[NatsService]:
    service = authorized_nats(tmp_path).start()
    yield service
    service.stop()


def test_the_settings_read_the_documented_variables() -> None:
    env = {"VEZA_NATS_USER": "veza-chat", "VEZA_NATS_PASSWORD": "pw", "VEZA_NATS_TLS_CA": "/etc/ca.pem"}
    for settings in (ChatSettings.from_env(env), StreamSettings.from_env(env)):
        assert (settings.nats_user, settings.nats_password, settings.nats_tls_ca) == ("veza-chat", "pw",
                                                                                      Path("/etc/ca.pem"))
        assert "pw" not in repr(settings)
    assert ChatSettings.from_env({"VEZA_NATS_CREDS": "/run/nats/chat.creds"}).nats_creds == Path(
        "/run/nats/chat.creds")
    with pytest.raises(ValidationError, match="go together"):
        ChatSettings.from_env({"VEZA_NATS_USER": "veza-chat"})
    with pytest.raises(ValidationError, match="exclude each other"):
        StreamSettings.from_env({**env, "VEZA_NATS_CREDS": "/run/nats/stream.creds"})


async def test_users_and_permissions_of_the_shipped_authorization(secured: NatsService) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats_py.connect(secured.url, allow_reconnect=False, max_reconnect_attempts=0)

    def auth(component: str) -> bus.NatsAuth:
        return bus.NatsAuth(nats_user=f"veza-{component}",
                            nats_password=PASSWORDS[f"VEZA_NATS_{component.upper()}_PASSWORD"])

    chat = await bus.connect(secured.url, name="chat", auth=auth("chat"))
    stream_errors: list[Exception] = []

    async def stream_error(exc: Exception) -> None:
        stream_errors.append(exc)

    stream = await nats_py.connect(secured.url, allow_reconnect=False, error_cb=stream_error,
                                   **bus.connect_options(auth("stream")))
    api = await bus.connect(secured.url, name="api", auth=auth("api"))
    try:
        heard = await chat.subscribe("veza.p.room.r.signals")
        revocations = await chat.subscribe("veza.p.user.*.revoked")
        await chat.flush()  # the server has both subscriptions before the other connections publish
        await stream.publish("veza.p.room.r.signals", b'{"kind":"moderation"}')
        await stream.flush()
        await api.publish("veza.p.user.u1.revoked", b'{"v":1}')
        await api.flush()
        assert (await revocations.next_msg(timeout=5)).data == b'{"v":1}'
        await asyncio.sleep(0.3)  # what is checked here is that nothing arrives
        assert heard.pending_msgs == 0
        assert any("permissions violation" in str(e).lower() for e in stream_errors), stream_errors
    finally:
        for nc in (chat, stream, api):
            await nc.close()


def _certificates(directory: Path) -> Path:
    """A CA, and a certificate it signed for 127.0.0.1 (server.pem, server.key); returns the CA's file."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veza test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return directory / "ca.pem"


async def test_tls_is_verified_against_the_given_ca(tmp_path: Path) -> None:
    directory = tmp_path / "nats"
    directory.mkdir()
    ca = _certificates(directory)
    service = NatsService(tmp_path, config=f'tls {{ cert_file: "{directory}/server.pem", '
                                            f'key_file: "{directory}/server.key" }}\n')
    service.start()
    try:
        url = f"tls://127.0.0.1:{service.port}"
        nc = await bus.connect(url, name="tls", auth=bus.NatsAuth(nats_tls_ca=ca))
        sub = await nc.subscribe("veza.p.x")
        await nc.publish("veza.p.x", b"over tls")
        assert (await sub.next_msg(timeout=5)).data == b"over tls"
        await nc.close()
        # Without the CA the server's certificate is not trusted (the system's CAs did not sign it).
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await nats_py.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
    finally:
        service.stop()


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


async def test_a_creds_file_sends_its_jwt_and_signs_the_servers_nonce(tmp_path: Path) -> None:
    """A .creds file (a user JWT and its nkey seed): the worker sends the JWT and signs the server's nonce. A server
    in operator mode checks the signature against the user's public key, as done here on the CONNECT it gets."""
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    body = bytes([18 << 3 | (20 << 3) >> 5, ((20 << 3) & 31) << 3]) + raw
    seed = base64.b32encode(body + _crc16(body).to_bytes(2, "little")).decode().rstrip("=")
    user_jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2ln"
    creds = tmp_path / "chat.creds"
    creds.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                     f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n")
    assert seed.startswith("SU")
    nonce = secrets.token_urlsafe(16)
    connects: list[dict[str, object]] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.11.0", "proto": 1, "max_payload": 1048576, "headers": True,
                "auth_required": True, "nonce": nonce}
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        connects.append(json.loads(line.split(b" ", 1)[1]))
        await reader.readline()  # PING
        writer.write(b"PONG\r\n")
        await writer.drain()
        await reader.read()

    listening = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        nc = await bus.connect(f"nats://127.0.0.1:{port}", name="creds", auth=bus.NatsAuth(nats_creds=creds))
        await nc.close()
    finally:
        listening.close()
    (connect,) = connects
    assert connect["jwt"] == user_jwt
    key.public_key().verify(base64.b64decode(str(connect["sig"])), nonce.encode())  # raises if it does not verify


async def test_a_connection_without_echo_hears_only_what_others_publish(nats: NatsService) -> None:
    own = await bus.connect(nats.url, name="replica-a", no_echo=True)
    other = await bus.connect(nats.url, name="replica-b")
    heard: list[bytes] = []
    try:
        async def hear(msg: Msg) -> None:
            heard.append(msg.data)

        await own.subscribe("veza.test.room.echo.events", cb=hear)
        await own.flush()  # the server has the subscription before anyone publishes
        await own.publish("veza.test.room.echo.events", b"mine")
        await other.publish("veza.test.room.echo.events", b"theirs")
        await own.flush()
        await other.flush()
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # time for "mine" too, were it echoed
        assert heard == [b"theirs"]
    finally:
        await own.close()
        await other.close()
