"""Mail for magic links goes only to an SMTP server whose certificate and name check out.

Real SMTP servers (aiosmtpd) with STARTTLS and with implicit TLS; the attack replayed is a server
in the middle presenting a certificate the platform does not trust, or one for another name.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.api import Inbox
from tests.support.waiting import wait_for
from veza_api.mail import Mailer, MailError
from veza_api.settings import ApiSettings
from veza_local.services import free_port


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (and 127.0.0.1 when it is "localhost")."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt: list[x509.GeneralName] = [x509.DNSName(name)]
    if name == "localhost":
        alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def servers(tmp_path: Path, inbox: Inbox) -> Iterator[dict[str, Any]]:
    """A STARTTLS server and an SMTPS server for "localhost", and an SMTPS server whose
    certificate names another host."""
    good = certificate(tmp_path, "localhost")
    other = certificate(tmp_path, "mail.other.example")
    starttls = Controller(inbox, hostname="127.0.0.1", port=free_port(), tls_context=server_context(*good),
                          require_starttls=True)
    implicit = Controller(inbox, hostname="127.0.0.1", port=free_port(), ssl_context=server_context(*good))
    misnamed = Controller(inbox, hostname="127.0.0.1", port=free_port(), ssl_context=server_context(*other))
    for controller in (starttls, implicit, misnamed):
        controller.start()
    yield {"starttls": starttls.port, "implicit": implicit.port, "misnamed": misnamed.port, "ca": str(good[0]),
           "other_ca": str(other[0])}
    for controller in (starttls, implicit, misnamed):
        controller.stop()


def mailer(port: int, **settings: Any) -> Mailer:
    return Mailer(ApiSettings(smtp_host="localhost", smtp_port=port, smtp_from="login@veza.test", **settings))


async def test_starttls_and_implicit_tls_verify_the_server(servers: dict[str, Any], inbox: Inbox) -> None:
    # A certificate the platform does not trust: a server in the middle reads no magic link.
    with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
        await mailer(servers["starttls"], smtp_starttls=True).send("ann@veza.test", "link", "token=abc")
    with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
        await mailer(servers["implicit"], smtp_implicit_tls=True).send("ann@veza.test", "link", "token=abc")
    # A trusted certificate for another name.
    with pytest.raises(MailError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        await mailer(servers["misnamed"], smtp_implicit_tls=True, smtp_ca_file=servers["other_ca"]).send(
            "ann@veza.test", "link", "token=abc")
    assert inbox.messages == []

    await mailer(servers["starttls"], smtp_starttls=True, smtp_ca_file=servers["ca"]).send(
        "ann@veza.test", "by starttls", "token=one")
    await mailer(servers["implicit"], smtp_implicit_tls=True, smtp_ca_file=servers["ca"]).send(
        "bob@veza.test", "by smtps", "token=two")
    await wait_for(lambda: len(inbox.messages) == 2, timeout=5, message="both mails delivered")
    assert {m["Subject"] for m in inbox.messages} == {"by starttls", "by smtps"}
