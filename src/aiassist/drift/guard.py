"""The drift guard: profiles requests per endpoint and API version, tests new versions
against the stable one, and switches a drifting version to the stable one.

The request path pays for one sampling draw, one dictionary look-up (is this version
switched?) and one queue put of the raw bytes; parsing, profiling and testing happen on
the guard's worker thread. That thread also re-reads the switches from the database every
`refresh_seconds`, so a roll forward made through the service's admin API or the CLI
reaches every process of the backend, and saves the profiles every `persist_seconds`, so
the stable version's history survives restarts.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiassist.drift.alerts import WebhookAlerter
from aiassist.drift.clients import ClientHints, client_identity
from aiassist.drift.detector import DetectorConfig, DriftDetector, Finding
from aiassist.drift.profile import Observation, Profile
from aiassist.drift.settings import DriftSettings
from aiassist.drift.shapes import FieldShape, fields_of, query_fields
from aiassist.drift.store import DriftState, DriftStore
from aiassist.drift.versions import VersionScheme, parse_scheme
from aiassist.metrics import Metrics, default_metrics
from aiassist.settings import load_settings, read_settings

__all__ = ["DriftConfig", "DriftGuard"]

log = logging.getLogger("aiassist.drift")
_STOP = object()


@dataclass(frozen=True)
class DriftConfig:
    """How the guard reads versions, where it keeps its state, what it does on a drift."""

    #: The version new ones are judged against and rolled back to.
    stable: str
    #: Where requests name their version: "header[:name]", "path[:regex]" or a scheme.
    scheme: VersionScheme | str = "header"
    #: The versions the backend serves; requests naming any other are left alone (so a
    #: client cannot fill the guard's tables with made-up versions). None: any version.
    versions: tuple[str, ...] | None = None
    #: The aiassist database (shared with the service's admin API). None: from Settings.
    database_url: str | None = None
    #: False keeps everything in memory (no database, no persistence).
    persist: bool = True
    #: Webhook for alerts (None: AIASSIST_DRIFT_WEBHOOK_URL) and its HMAC secret.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    #: Switch a drifting version to `stable` (False: only alert).
    auto_rollback: bool = True
    #: Request header naming the client (e.g. "x-client-id"): each client's requests are
    #: judged against that client's own history on the stable version.
    client_header: str | None = None
    #: Without that header, name the client from the request's credentials (hashed), else
    #: its user agent and address (`aiassist.drift.clients`), for the same per-client test.
    identify_clients: bool = True
    #: Share of requests profiled (detection delay in requests grows as 1 / sample_rate).
    sample_rate: float = 1.0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    #: JSON bodies larger than this are not parsed (their fields count as not looked at).
    max_body_bytes: int = 64 * 1024
    refresh_seconds: float = 2.0
    persist_seconds: float = 10.0
    queue_size: int = 10_000
    max_streams: int = 1_000
    max_history: int = 50_000
    #: How many times and how patiently a webhook alert is retried.
    webhook_attempts: int = 4
    webhook_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")


class DriftGuard:
    """One per process of the backend; shared by its middleware. Thread-safe."""

    def __init__(self, config: DriftConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.stable = config.stable
        self.scheme = parse_scheme(config.scheme)
        self.metrics = metrics or default_metrics()
        self.store: DriftStore | None = None
        self._db: Any = None
        webhook_url, webhook_secret = config.webhook_url, config.webhook_secret
        if webhook_url is None or webhook_secret is None:
            own = read_settings(DriftSettings)
            webhook_url = webhook_url or own.webhook_url
            if webhook_secret is None and own.webhook_secret is not None:
                webhook_secret = own.webhook_secret.get_secret_value()
        if config.persist:
            from aiassist.store.db import make_engine, make_sessionmaker

            url = config.database_url or load_settings().resolved_database_url
            self._db = make_engine(url)
            self.store = DriftStore(make_sessionmaker(self._db))
        self.alerter = (
            WebhookAlerter(
                webhook_url,
                secret=webhook_secret,
                metrics=self.metrics,
                attempts=config.webhook_attempts,
                backoff_s=config.webhook_backoff_s,
            )
            if webhook_url
            else None
        )
        self._routes: dict[str, str] = {}
        self._on_hold: frozenset[tuple[str, str]] = frozenset()
        self._accepted: dict[tuple[str, str], frozenset[str]] = {}
        self._profiles: dict[tuple[str, str], Profile] = {}
        self._detectors: dict[tuple[str, str], DriftDetector] = {}
        self._findings: list[tuple[str, str, Finding]] = []
        self._random = random.random
        self._versions = frozenset(config.versions) if config.versions is not None else None
        if self.store is not None:
            self._profiles = self.store.load_profiles(config.max_history)
            self._apply(self.store.state())
        self._pid = -1
        self._queue: queue.Queue[Any] = queue.Queue(config.queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # --- the request path ----------------------------------------------------------------
    def route(self, version: str) -> str | None:
        """The version to serve a request for `version` with, when it is switched."""
        if self._pid != os.getpid():
            self._start()
        return self._routes.get(version)

    def knows(self, version: str) -> bool:
        """Whether requests for `version` are the guard's business."""
        return self._versions is None or version in self._versions

    def sampled(self) -> bool:
        return self.config.sample_rate >= 1.0 or self._random() < self.config.sample_rate

    def submit(
        self,
        method: str,
        template: str,
        version: str,
        *,
        body: bytes | None,
        query: str,
        response: bytes | None,
        rerouted: bool,
        client: str | None = None,
        hints: ClientHints | None = None,
    ) -> None:
        """Queue one request for profiling; never blocks (a full queue drops and counts).
        `client` names the client (the configured header); else `hints` tell it (the client
        identity is worked out on the guard's thread, off the request path)."""
        item = (method, template, version, body, query, response, rerouted, client, hints)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.metrics.drift_dropped.inc()

    # --- lifecycle -----------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            if self._pid != -1:  # a forked child: the parent's thread and queue are not ours
                self._queue = queue.Queue(self.config.queue_size)
                if self._db is not None:
                    self._db.dispose(close=False)
            self._thread = threading.Thread(target=self._run, name="aiassist-drift", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is profiled and tested (tests, benches)."""
        if self._pid != os.getpid():
            self._start()
        done = threading.Event()
        self._queue.put(done, timeout=timeout)
        done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Drain the queue, save the profiles, deliver pending alerts."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self._queue.put(_STOP, timeout=timeout)
            self._thread.join(timeout)
        self._save()
        if self.alerter is not None:
            self.alerter.close(timeout)
        if self._db is not None:
            self._db.dispose()

    def refresh(self) -> None:
        """Re-read the switches, holds and accepted changes from the database."""
        if self.store is not None:
            self._apply(self.store.state())

    # --- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        next_refresh = time.monotonic() + self.config.refresh_seconds
        next_save = time.monotonic() + self.config.persist_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.01, next_refresh - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif item is not None:
                try:
                    self._process(*item)
                except Exception:
                    log.exception("drift guard: could not profile a request")
            now = time.monotonic()
            if now >= next_refresh:
                next_refresh = now + self.config.refresh_seconds
                self._guarded(self.refresh, "read the version switches")
            if now >= next_save:
                next_save = now + self.config.persist_seconds
                self._guarded(self._save, "save the profiles")

    def _guarded(self, fn: Any, what: str) -> None:
        try:
            fn()
        except Exception as exc:  # the database being away must not stop profiling
            log.warning("drift guard: could not %s: %s", what, exc)

    def _process(
        self,
        method: str,
        template: str,
        version: str,
        body: bytes | None,
        query: str,
        response: bytes | None,
        rerouted: bool,
        client: str | None,
        hints: ClientHints | None,
    ) -> None:
        endpoint = f"{method} {self.scheme.endpoint(template)}"
        key = (endpoint, version)
        profile = self._profiles.get(key)
        if profile is None:
            if len(self._profiles) >= self.config.max_streams:
                return
            profile = self._profiles[key] = Profile(self.config.max_history)
        fields: dict[str, FieldShape] = query_fields(query)
        parts = {"query"}
        if body is not None:
            parts.add("body")
            fields.update(_json_fields(body, "body"))
        if response is not None:
            parts.add("response")
            fields.update(_json_fields(response, "response"))
        if client:
            client = client[:128]
        elif hints is not None and self.config.identify_clients:
            client = client_identity(hints)
        obs = Observation(fields, frozenset(parts), client or None)
        profile.add(obs)
        self.metrics.drift_observations.labels(version).inc()
        if version == self.stable or rerouted or key in self._on_hold:
            return
        detector = self._detectors.get(key)
        if detector is None:
            reference = self._profiles.setdefault(
                (endpoint, self.stable), Profile(self.config.max_history)
            )
            detector = self._detectors[key] = DriftDetector(
                reference, self.config.detector, self._accepted.get(key, frozenset())
            )
        finding = detector.update(obs)
        if finding is not None:
            self._act(endpoint, version, finding)

    def _act(self, endpoint: str, version: str, finding: Finding) -> None:
        key = (endpoint, version)
        self._on_hold = self._on_hold | {key}
        fields = [d.to_json() for d in finding.fields]
        rolled_back = False
        incident_id: int | None = None
        if self.store is not None:
            opened = self.store.open_incident(
                endpoint=endpoint,
                version=version,
                stable_version=self.stable,
                severity=finding.severity,
                fields=fields,
                explanation=finding.explanation,
                observations=finding.observations,
                rollback=self.config.auto_rollback,
            )
            if opened is None:  # another process of the backend found it first
                self.refresh()
                return
            incident, route = opened
            incident_id, rolled_back = incident.id, route is not None
        elif self.config.auto_rollback and version not in self._routes:
            rolled_back = True
        if rolled_back:
            self._routes = self._routes | {version: self.stable}
            self.metrics.drift_routes.set(len(self._routes))
        action = "rolled_back" if rolled_back else "alerted"
        self._findings.append((endpoint, version, finding))
        self.metrics.drift_incidents.labels(version, finding.severity, action).inc()
        log.warning("API drift on %s %s (%s): %s", endpoint, version, action, finding.explanation)
        if self.alerter is not None:
            self.alerter.send(
                "drift.detected",
                {
                    "incident": incident_id,
                    "endpoint": endpoint,
                    "version": version,
                    "stable_version": self.stable,
                    "action": action,
                    "severity": finding.severity,
                    "fields": fields,
                    "new_fields": [{"field": n, "share": s} for n, s in finding.new_fields],
                    "explanation": finding.explanation,
                    "observations": finding.observations,
                },
            )

    def _apply(self, state: DriftState) -> None:
        released = self._on_hold - state.on_hold
        for key in released:  # rolled forward: test it afresh, without the accepted fields
            detector = self._detectors.pop(key, None)
            if detector is not None:
                log.info("drift guard: %s %s rolled forward; testing it again", *key)
        for key, names in state.accepted.items():
            if self._accepted.get(key) != names:
                self._detectors.pop(key, None)
        self._accepted = state.accepted
        self._on_hold = state.on_hold
        self._routes = state.routes
        self.metrics.drift_routes.set(len(state.routes))

    def _save(self) -> None:
        if self.store is not None and self._profiles:
            self.store.save_profiles((e, v, p) for (e, v), p in list(self._profiles.items()))

    @property
    def findings(self) -> list[tuple[str, str, Finding]]:
        """Drifts this process found (newest last), for tests and in-memory use."""
        return list(self._findings)


def _json_fields(raw: bytes, part: str) -> dict[str, FieldShape]:
    if not raw:
        return {}
    try:
        document = json.loads(raw)
    except ValueError:
        return {}
    return fields_of(document, part)
