"""Who sent a request, for the drift test, when the backend does not say so.

The drift test judges each request against its own client's history on the stable version
(see `detector.py`); that is what keeps a legacy client's burst from reading as a drift.
Without a configured client header the guard names the client from what most requests
carry anyway, in this order:

1. a credential: a JWT bearer token's issuer and subject (stable across token refreshes),
   any other bearer token or `Authorization` value, an `X-API-Key`, or the user name of
   `Basic` credentials (never the password);
2. otherwise the user agent, digits blanked (`acme-sdk/2.3.1` and `acme-sdk/2.4.0` are the
   same client software), together with the caller's address (the first `X-Forwarded-For`
   entry, else the peer).

Only a 64-bit BLAKE2b digest of it is kept, so no credential reaches the profiles or the
database. The identity is a statistical grouping, not authentication: a caller that
forges another's only blurs that other client's history, as it could blur the whole
stream's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import NamedTuple

__all__ = ["ClientHints", "client_identity"]

_DIGITS = re.compile(r"\d+")
_MAX = 512  # characters of a header looked at


class ClientHints(NamedTuple):
    """The headers (and peer address) a request's client is told by; any may be missing."""

    authorization: str | None = None
    api_key: str | None = None
    user_agent: str | None = None
    forwarded_for: str | None = None
    peer: str | None = None


def _digest(kind: str, value: str) -> str:
    h = hashlib.blake2b(value.encode("utf-8", "replace"), digest_size=8, person=b"aiassist-drift")
    return f"{kind}:{h.hexdigest()}"


def _jwt_subject(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 4096:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict):
        return None
    subject = payload.get("sub") or payload.get("client_id") or payload.get("azp")
    if not isinstance(subject, str) or not subject:
        return None
    return f"{payload.get('iss', '')}|{subject}"


def _basic_user(credentials: str) -> str | None:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8", "replace")
    except (ValueError, binascii.Error):
        return None
    return decoded.partition(":")[0] or None


def client_identity(hints: ClientHints) -> str | None:
    """A short, stable, non-reversible name of the request's client; None when nothing in
    the request tells clients apart."""
    if hints.authorization:
        value = hints.authorization.strip()[:_MAX]
        scheme, _, credentials = value.partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and credentials:
            subject = _jwt_subject(credentials)
            return _digest("sub", subject) if subject else _digest("key", credentials)
        if scheme == "basic" and credentials:
            user = _basic_user(credentials)
            if user:
                return _digest("user", user)
        return _digest("key", value)
    if hints.api_key:
        return _digest("key", hints.api_key.strip()[:_MAX])
    address = hints.forwarded_for.partition(",")[0].strip() if hints.forwarded_for else ""
    address = address or hints.peer or ""
    if not hints.user_agent and not address:
        return None
    agent = _DIGITS.sub("0", hints.user_agent[:_MAX]) if hints.user_agent else ""
    return _digest("agent", f"{agent}|{address}")
