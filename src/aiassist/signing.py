"""Webhook signatures, one scheme both ways: alerts aiassist sends and webhooks it receives.

`X-AIAssist-Signature: sha256=<hex>` is the HMAC-SHA256 of `<X-AIAssist-Timestamp>.<body>`
under a shared secret, so a receiver can check both who sent a body and that it is recent
(not a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "verify_signature"]

TIMESTAMP_HEADER = "x-aiassist-timestamp"
SIGNATURE_HEADER = "x-aiassist-signature"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str, timestamp: str, body: bytes, signature: str, max_age_s: float = 300.0
) -> bool:
    """What a receiver runs: the signature matches and the timestamp is recent."""
    try:
        age = abs(time.time() - float(timestamp))
    except ValueError:
        return False
    return age <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)
