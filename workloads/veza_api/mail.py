"""Outgoing mail over SMTP (login links, registration confirmations). smtplib is blocking: it runs in a
thread. For local development, `VEZA_MAIL_DIR` writes each mail to a file instead."""

from __future__ import annotations

import asyncio
import functools
import smtplib
import ssl
import time
from email.message import EmailMessage
from pathlib import Path

from .settings import ApiSettings


class MailError(Exception):
    pass


class Mailer:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host or self.settings.mail_dir)

    async def send(self, to: str, subject: str, body: str) -> None:
        s = self.settings
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = s.smtp_from, to, subject
        message.set_content(body)
        if s.mail_dir and not s.smtp_host:
            await asyncio.to_thread(self._write, Path(s.mail_dir), message)
            return
        if not s.smtp_host:
            raise MailError("no SMTP server configured")

        def deliver() -> None:
            assert s.smtp_host
            # A magic link read in transit is a login: the certificate and the host name are checked
            # (smtplib checks neither without a context).
            tls = ssl.create_default_context(cafile=s.smtp_ca_file)
            connect = (functools.partial(smtplib.SMTP_SSL, context=tls) if s.smtp_implicit_tls else smtplib.SMTP)
            with connect(s.smtp_host, s.smtp_port, timeout=10) as smtp:
                if s.smtp_starttls and not s.smtp_implicit_tls:
                    smtp.starttls(context=tls)
                if s.smtp_username and s.smtp_password:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(message)

        try:
            await asyncio.to_thread(deliver)
        except (OSError, smtplib.SMTPException) as exc:  # ssl.SSLError is an OSError
            raise MailError(str(exc)) from exc

    @staticmethod
    def _write(directory: Path, message: EmailMessage) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{time.time_ns()}.eml").write_bytes(bytes(message))
        except OSError as exc:
            raise MailError(str(exc)) from exc
