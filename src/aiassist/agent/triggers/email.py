"""Inbound email that starts flows: an aiosmtpd handler routing recipients to targets.

Mail for an unknown recipient is refused at RCPT (550), so nothing is accepted that would
be dropped. A message is acknowledged (250) only once its run has been started and
recorded; a failure answers 451, so the sending server keeps the message and retries, and
the event id (from the Message-ID) makes the retry start one run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from aiosmtpd.controller import Controller

from aiassist.agent.triggers.base import Event, Starter

__all__ = ["EmailTrigger", "InboundEmail"]

log = logging.getLogger("aiassist.triggers")

MAX_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class InboundEmail:
    """The parts of a message a flow works with (the payload of its event)."""

    sender: str
    sender_name: str
    to: str
    subject: str
    text: str
    message_id: str


class EmailTrigger:
    """Routes `recipient address -> target`; use `serve()` to listen, or pass it to aiosmtpd."""

    def __init__(self, routes: Mapping[str, str], start: Starter) -> None:
        self.routes = {address.lower(): target for address, target in routes.items()}
        self._start = start

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.lower() not in self.routes:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        body = message.get_body(preferencelist=("plain", "html"))
        text = body.get_content() if body is not None else ""
        name, sender = parseaddr(str(message.get("From", envelope.mail_from)))
        message_id = (
            str(message.get("Message-ID", "")) or hashlib.sha256(envelope.content).hexdigest()
        )
        try:
            for address in dict.fromkeys(a.lower() for a in envelope.rcpt_tos):
                subject = str(message.get("Subject", ""))
                mail = InboundEmail(
                    sender or envelope.mail_from, name, address, subject, text.strip(), message_id
                )
                event_id = hashlib.sha256(f"{message_id}|{address}".encode()).hexdigest()[:32]
                event = Event(self.routes[address], "email", asdict(mail), address, id=event_id)
                await self._start(event)
        except Exception:
            log.exception("inbound email %s: starting its run failed", message_id)
            return "451 4.3.0 could not start the flow, try again later"
        return "250 OK"

    def serve(self, host: str = "127.0.0.1", port: int = 8025) -> Controller:
        """Start an SMTP listener on its own thread; `.stop()` it when done."""
        controller = Controller(self, hostname=host, port=port, data_size_limit=MAX_MESSAGE_BYTES)
        controller.start()
        return controller
