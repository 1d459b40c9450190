"""Outbound email over SMTP, kept in the backend's `sent_emails` table."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

from sqlalchemy.orm import Session

from .db import BackendSettings, SentEmail

__all__ = ["send_email"]


def send_email(
    session: Session, settings: BackendSettings, to: str, subject: str, body: str
) -> SentEmail:
    """Send one plain-text message; raises `OSError`/`smtplib.SMTPException` when it fails."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=settings.mail_from.partition("@")[2] or None)
    message.set_content(body)
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    sent = SentEmail(to=to, subject=subject, body=body, message_id=message["Message-ID"])
    session.add(sent)
    return sent
