"""API-version drift guard: profile each API version's fields per endpoint, find a sudden
rise of a field's missing rate (or a type change) on a new version with a sequential test
against the stable version, switch the drifting version back to the stable one, and alert.

- `DriftGuard` / `DriftConfig`: one per backend process (`guard.py`);
- `aiassist.integrations.asgi.DriftMiddleware` (FastAPI, Starlette) and
  `aiassist.integrations.django.drift.DriftMiddleware` feed it and honour its switches;
- `DriftDetector`: the Bernoulli CUSUM tests (`detector.py`), usable on their own;
- `client_identity`: who sent a request, from its credentials or user agent (`clients.py`);
- `DriftStore`: incidents, switches and profiles in the database, audited (`store.py`);
- `WebhookAlerter`: signed, retried webhook alerts (`alerts.py`).
"""

from aiassist.drift.alerts import WebhookAlerter
from aiassist.drift.clients import ClientHints, client_identity
from aiassist.drift.detector import DetectorConfig, DriftDetector, FieldDrift, Finding
from aiassist.drift.guard import DriftConfig, DriftGuard
from aiassist.drift.profile import Observation, Profile
from aiassist.drift.shapes import fields_of, query_fields
from aiassist.drift.store import DriftError, DriftStore
from aiassist.drift.versions import CallableVersion, HeaderVersion, PathVersion, VersionScheme
from aiassist.signing import sign, verify_signature

__all__ = [
    "CallableVersion",
    "ClientHints",
    "DetectorConfig",
    "DriftConfig",
    "DriftDetector",
    "DriftError",
    "DriftGuard",
    "DriftStore",
    "FieldDrift",
    "Finding",
    "HeaderVersion",
    "Observation",
    "PathVersion",
    "Profile",
    "VersionScheme",
    "WebhookAlerter",
    "client_identity",
    "fields_of",
    "query_fields",
    "sign",
    "verify_signature",
]
