"""Celery adoption of the `priority` module: score a task when it is enqueued, let the broker
start higher-scored tasks first, and record when each task really started and finished.

Three parts, used together::

    from celery import Celery
    from aiassist.integrations.celery.priority import PrioritizedTask, configure_priority, enqueue

    app = Celery("shop", broker="amqp://guest:guest@127.0.0.1:5672//")
    configure_priority(app)  # broker settings + outcome recording on the workers

    @app.task
    def dispatch(order_id: int) -> None: ...

    enqueue(dispatch, (42,), features={"task_type": "dispatch", "deadline_in_s": 600})

- `configure_priority(app)` applies Celery's documented priority settings for the app's
  broker. Without them a broker priority is silently ignored: RabbitMQ only orders queues
  declared with `x-max-priority`, and any worker that prefetches several messages runs them
  in arrival order whatever their priority.
- `enqueue(task, ...)` (or the `PrioritizedTask` base class, which makes `delay` and
  `apply_async` do the same) scores the task through `AIAssistService` and publishes it with
  the matching broker priority. The decision id, the enqueue time and the absolute deadline
  travel in the message headers, so whichever worker runs the task can report its outcome.
- Signal handlers, connected by `configure_priority`, record that outcome (`waited_s`,
  `ran_s`, `deadline_met`) when the task ends, so the model learns from real waits.

The load features the caller leaves out are filled from the broker (`queue_features`): the
messages waiting in the task's queue (`queue_length`) and, on RabbitMQ, the workers
consuming it (`workers`; on Redis, which cannot tell, the `workers` given to
`configure_priority`). The broker is asked at most once a second per queue.

The AI layer never breaks a task: a scoring failure enqueues the task unscored at the default
priority, and an outcome that cannot be recorded is logged and dropped.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from weakref import WeakKeyDictionary

from celery import Celery, Task, signals, states
from celery.result import AsyncResult

from aiassist.modules.priority import PriorityDecision, PriorityFeatures, PriorityOutcome
from aiassist.modules.priority import module as priority
from aiassist.sdk.service import AIAssistService

__all__ = [
    "HEADER_DEADLINE",
    "HEADER_DECISION_ID",
    "HEADER_ENQUEUED_AT",
    "HEADER_LEVEL",
    "HEADER_PRIORITY",
    "HEADER_SOURCE",
    "PRIORITY_LEVELS",
    "BrokerKind",
    "PrioritizedTask",
    "broker_kind",
    "broker_priority",
    "configure_priority",
    "enqueue",
    "prioritize",
    "queue_features",
    "task_headers",
]

log = logging.getLogger("aiassist.celery")

BrokerKind = Literal["amqp", "redis", "other"]
RawFeatures = PriorityFeatures | Mapping[str, Any]
FeaturesHook = Callable[..., RawFeatures | None]

#: Broker priorities 0-9, the range of `PriorityDecision.broker_priority`.
PRIORITY_LEVELS: Final = 10

#: Message headers set at enqueue time and read by the worker's signal handlers.
HEADER_DECISION_ID: Final = "aiassist_decision_id"
HEADER_ENQUEUED_AT: Final = "aiassist_enqueued_at"  # Unix time, seconds
HEADER_DEADLINE: Final = "aiassist_deadline"  # Unix time, seconds; absent: no deadline
HEADER_PRIORITY: Final = "aiassist_priority"  # the combined score in [0, 1]
HEADER_LEVEL: Final = "aiassist_level"  # broker_priority 0-9, higher first, on every broker
HEADER_SOURCE: Final = "aiassist_source"  # "model" or "fallback"
_PREFIX: Final = "aiassist_"

_MAX_SECONDS: Final = 30 * 86_400.0  # PriorityOutcome's bound on waited_s and ran_s


# --- broker settings -------------------------------------------------------------------
@dataclass
class _AppState:
    kind: BrokerKind
    service: AIAssistService | None = None
    workers: int | None = None


_apps: WeakKeyDictionary[Any, _AppState] = WeakKeyDictionary()
_apps_lock = threading.Lock()


def broker_kind(app: Celery) -> BrokerKind:
    """Which priority semantics the app's broker has: 'amqp' (RabbitMQ), 'redis' or 'other'.

    Read from the transport kombu would use for the configured broker URL (no connection is
    opened), so aliases such as `pyamqp://`, `rediss://` and `sentinel://` are recognised.
    """
    state = _apps.get(app)
    if state is not None:
        return state.kind
    try:
        with app.connection_for_write() as conn:
            driver = str(conn.transport.driver_type)
    except Exception:  # an unknown scheme or a missing client library
        log.warning("cannot tell the broker type of %r; priorities as on RabbitMQ", app)
        driver = "other"
    kind: BrokerKind = "amqp" if driver == "amqp" else "redis" if driver == "redis" else "other"
    with _apps_lock:
        return _apps.setdefault(app, _AppState(kind)).kind


def broker_priority(kind: BrokerKind, level: int) -> int:
    """The message priority that makes a broker serve `level` (0-9, higher first) in order.

    RabbitMQ serves the highest number first. Celery's Redis transport emulates priorities
    with one list per step and pops them in ascending order, so there a LOWER number is
    served first and the level is inverted.
    """
    level = min(max(int(level), 0), PRIORITY_LEVELS - 1)
    return PRIORITY_LEVELS - 1 - level if kind == "redis" else level


def configure_priority(
    app: Celery,
    *,
    default_priority: int = 0,
    service: AIAssistService | None = None,
    workers: int | None = None,
) -> BrokerKind:
    """Apply Celery's documented priority settings for the app's broker; return its kind.

    Call it where the app is created, before any worker or producer connects, so that
    producers and workers share the settings (both sides must agree on them).

    - Every broker: `worker_prefetch_multiplier=1` and `task_acks_late=True`. A worker
      otherwise reserves several messages ahead in arrival order and runs them whatever
      their priority; with late acks the running task holds the one reservation, so the
      next message is taken from the broker only when a slot is free, highest first.
    - RabbitMQ: `task_queue_max_priority=10`, so Celery declares its queues with
      `x-max-priority` (RabbitMQ ignores priorities on queues declared without it, and
      refuses to re-declare an existing queue with it: delete or rename such a queue).
    - Redis: `broker_transport_options` with one list per level (`priority_steps` 0-9),
      `sep=':'` and `queue_order_strategy='priority'` unless already set.
    - `task_default_priority`: tasks sent without a score get `default_priority` (0-9,
      higher first; 0 = behind every scored task). On Redis this matters: a message without
      a priority lands on the step served FIRST, ahead of every scored task.

    `service` is used on the workers to record outcomes (default: the process-wide
    `AIAssistService.instance()`, created on first use). `workers`: the worker processes
    serving the app's queues, for the `workers` feature where the broker cannot count them
    (Redis; on RabbitMQ the consumers are counted, times `worker_concurrency` if set).
    """
    if workers is not None and workers < 1:
        raise ValueError("workers must be >= 1")
    kind = broker_kind(app)
    with _apps_lock:
        _apps[app].service = service
        _apps[app].workers = workers
    settings: dict[str, Any] = {
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_default_priority": broker_priority(kind, default_priority),
    }
    if kind == "amqp":
        settings["task_queue_max_priority"] = PRIORITY_LEVELS
    elif kind == "redis":
        options = dict(app.conf.broker_transport_options or {})
        options["priority_steps"] = list(range(PRIORITY_LEVELS))
        options.setdefault("sep", ":")
        options.setdefault("queue_order_strategy", "priority")
        settings["broker_transport_options"] = options
    else:
        log.warning("broker of %r has no known priority support: tasks run in FIFO order", app)
    app.conf.update(settings)
    _connect_signals()
    return kind


# --- enqueue ---------------------------------------------------------------------------
def prioritize(
    app: Celery,
    features: RawFeatures,
    options: Mapping[str, Any] | None = None,
    *,
    service: AIAssistService | None = None,
) -> dict[str, Any]:
    """`apply_async` options that publish a task with its score: `priority` and `headers`.

    Never raises: if the features are invalid or nothing can score them, the options come
    back unchanged (the task then runs at the default priority) and the reason is logged.
    A `priority` already in `options` is kept, while the decision is still recorded (shadow
    mode: see what the model would do before letting it order the queue).
    """
    result = dict(options or {})
    queue = result.get("queue")
    scored = _score(app, features, service, queue if isinstance(queue, str) else None)
    if scored is None:
        return result
    decision, deadline_in_s = scored
    now = time.time()
    headers: dict[str, Any] = {
        HEADER_DECISION_ID: decision.decision_id,
        HEADER_ENQUEUED_AT: now,
        HEADER_PRIORITY: round(decision.priority, 6),
        HEADER_LEVEL: decision.broker_priority,
        HEADER_SOURCE: decision.source,
    }
    if deadline_in_s is not None:
        headers[HEADER_DEADLINE] = now + deadline_in_s
    result["headers"] = {**(result.get("headers") or {}), **headers}
    result.setdefault("priority", broker_priority(broker_kind(app), decision.broker_priority))
    return result


def enqueue(
    task: Task,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    features: RawFeatures,
    service: AIAssistService | None = None,
    **options: Any,
) -> AsyncResult:
    """`task.apply_async(args, kwargs, **options)`, scored with `features` by the `priority`
    module (through `service`, default `AIAssistService.instance()`).

    Use it where the business code enqueues; the task itself does not change. Scoring
    costs microseconds in local mode and one bounded HTTP call in remote mode; when the
    service is down the rule fallback scores instead, so the order keeps its sense.
    """
    return task.apply_async(
        args, kwargs, **prioritize(task.app, features, options, service=service)
    )


class PrioritizedTask(Task):  # type: ignore[misc]  # celery ships no type information
    """Task base class whose `delay` and `apply_async` score every call.

    The features come from `apply_async(..., priority_features={...})` or from a
    `priority_features` hook given to the decorator, called with the task's arguments::

        @app.task(base=PrioritizedTask,
                  priority_features=lambda order_id, due_in_s: {"deadline_in_s": due_in_s})
        def dispatch(order_id: int, due_in_s: float) -> None: ...

        dispatch.delay(42, 600)

    A retry is not scored again: Celery copies the message's custom headers to the retry
    (`request.headers`; the end-to-end tests check it), so it keeps the first decision, its
    priority and its enqueue time, and the task's one outcome covers every attempt.
    """

    #: Called with the task's args and kwargs; returns the features, or None to not score.
    priority_features: FeaturesHook | None = None
    #: The service that scores (default: `AIAssistService.instance()`).
    priority_service: AIAssistService | None = None

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        features: RawFeatures | None = options.pop("priority_features", None)
        headers = options.get("headers") or {}
        if HEADER_DECISION_ID not in headers:  # a retry already carries its decision
            if features is None:
                features = self._features_from_hook(args, kwargs)
            if features is not None:
                options = prioritize(self.app, features, options, service=self.priority_service)
        return super().apply_async(args, kwargs, **options)

    def _features_from_hook(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> RawFeatures | None:
        # getattr_static: a plain function given to `@app.task(...)` becomes a class
        # attribute of the generated task class and would otherwise be bound as a method.
        hook = inspect.getattr_static(self, "priority_features", None)
        if isinstance(hook, staticmethod | classmethod):
            hook = hook.__get__(self, type(self))
        if hook is None:
            return None
        try:
            return hook(*(args or ()), **(kwargs or {}))  # type: ignore[no-any-return]
        except Exception:
            log.exception("priority_features of %s failed; enqueued unscored", self.name)
            return None


def task_headers(request: Any) -> dict[str, Any]:
    """The aiassist headers of a task request (`task.request`), in any Celery version.

    Celery exposes a message's custom headers as attributes of the request, and in eager
    mode under `request.headers`; both are looked at.
    """
    found: dict[str, Any] = {}
    nested = getattr(request, "headers", None)
    if isinstance(nested, Mapping):
        found.update((k, v) for k, v in nested.items() if str(k).startswith(_PREFIX))
    values = request if isinstance(request, Mapping) else getattr(request, "__dict__", {})
    found.update((k, v) for k, v in values.items() if str(k).startswith(_PREFIX))
    return found


# --- load features from the broker ----------------------------------------------------
_PROBE_SECONDS: Final = 1.0
_probes: dict[tuple[int, str], tuple[float, dict[str, int]]] = {}
_probes_lock = threading.Lock()


def queue_features(app: Celery, queue: str | None = None) -> dict[str, int]:
    """`queue_length` and `workers` of `queue` (default: the app's default queue) as the
    broker sees them now, or less when it cannot tell; {} when it cannot be asked.

    Cached for a second per queue, so that a burst of enqueues costs one broker round trip.
    """
    name = queue or str(app.conf.task_default_queue)
    cache_key = (id(app), name)
    now = time.monotonic()
    with _probes_lock:
        cached = _probes.get(cache_key)
    if cached is not None and now - cached[0] < _PROBE_SECONDS:
        return cached[1]
    try:
        found = _probe(app, name)
    except Exception as exc:  # a broker that cannot answer: score without these features
        log.warning("cannot read the length of queue %r from the broker: %s", name, exc)
        found = {}
    with _probes_lock:
        if len(_probes) > 1000:
            _probes.clear()
        _probes[cache_key] = (now, found)
    return found


def _probe(app: Celery, queue: str) -> dict[str, int]:
    kind = broker_kind(app)
    state = _apps.get(app)
    configured = state.workers if state is not None else None
    concurrency = app.conf.worker_concurrency
    found: dict[str, int] = {}
    with app.pool.acquire(block=True, timeout=2) as conn:
        if kind == "amqp":
            channel = conn.channel()
            try:  # passive: never creates the queue
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            except Exception as exc:
                if getattr(exc, "code", None) != 404:
                    raise
                messages, consumers = 0, 0  # not declared yet: nothing queued
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
            found["queue_length"] = int(messages)
            if configured is None and consumers:
                found["workers"] = int(consumers) * int(concurrency or 1)
        elif kind == "redis":
            options = app.conf.broker_transport_options or {}
            sep = str(options.get("sep", ":"))
            steps = options.get("priority_steps") or [0]
            names = [queue] + [f"{queue}{sep}{step}" for step in steps if step]
            client = conn.default_channel.client
            found["queue_length"] = int(sum(client.llen(n) for n in names))
        else:
            return {}
    if configured is not None:
        found["workers"] = configured
    return found


def _service(app: Any, service: AIAssistService | None) -> AIAssistService:
    if service is not None:
        return service
    state = _apps.get(app) if app is not None else None
    if state is not None and state.service is not None:
        return state.service
    return AIAssistService.instance()


def _score(
    app: Celery, features: RawFeatures, service: AIAssistService | None, queue: str | None
) -> tuple[PriorityDecision, float | None] | None:
    try:
        if isinstance(features, PriorityFeatures):
            given = features.model_dump(include=features.model_fields_set)
        else:
            given = dict(features)
        if not {"queue_length", "workers"} <= given.keys():
            given = queue_features(app, queue) | given
        f = priority.Features.model_validate(given)
    except Exception:
        log.exception("invalid priority features; the task is enqueued unscored")
        return None
    try:
        decision = _service(app, service).decide(priority, f)
    except Exception:  # e.g. settings that cannot build a service: the rule still orders
        log.exception("priority scoring failed; the rule fallback orders this task")
        decision = priority.fallback(f)  # the contract: a fallback never raises
    return decision, f.deadline_in_s


# --- worker side: outcomes -------------------------------------------------------------
@dataclass(slots=True)
class _Attempt:
    decision_id: str
    enqueued_at: float
    deadline: float | None
    started_at: float
    started_clock: float
    failed: bool = False


_attempts: dict[str, _Attempt] = {}
_attempts_lock = threading.Lock()
_MAX_ATTEMPTS: Final = 100_000  # bounds the table if postrun never comes for some tasks


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """Note when a scored task starts; `waited_s` is this minus the enqueue header."""
    try:
        started_at, started_clock = time.time(), time.perf_counter()
        if task_id is None or task is None:
            return
        headers = task_headers(task.request)
        decision_id = headers.get(HEADER_DECISION_ID)
        enqueued_at = _float(headers.get(HEADER_ENQUEUED_AT))
        if not decision_id or enqueued_at is None:
            return  # not scored by us
        attempt = _Attempt(
            str(decision_id),
            enqueued_at,
            _float(headers.get(HEADER_DEADLINE)),
            started_at,
            started_clock,
        )
        with _attempts_lock:
            if len(_attempts) >= _MAX_ATTEMPTS:
                _attempts.clear()
            _attempts[task_id] = attempt
    except Exception:
        log.exception("aiassist: could not note the start of task %s", task_id)


def _on_failure(task_id: str | None = None, **_: Any) -> None:
    """Mark the attempt failed: a failed task did not meet its deadline, however fast."""
    try:
        with _attempts_lock:
            attempt = _attempts.get(task_id or "")
        if attempt is not None:
            attempt.failed = True
        # No attempt: the failure was detected outside the process that ran the task (hard
        # time limit, lost worker); its start is unknown there, so no outcome is recorded.
    except Exception:
        log.exception("aiassist: could not note the failure of task %s", task_id)


def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    """Record the outcome of a scored task once it has ended for good (not on a retry)."""
    try:
        finished_at, finished_clock = time.time(), time.perf_counter()
        with _attempts_lock:
            attempt = _attempts.pop(task_id or "", None)
        if attempt is None or state == states.RETRY:
            return  # unscored, or the retry's own attempt will report
        ok = state == states.SUCCESS and not attempt.failed
        outcome = PriorityOutcome(
            waited_s=min(max(attempt.started_at - attempt.enqueued_at, 0.0), _MAX_SECONDS),
            ran_s=min(max(finished_clock - attempt.started_clock, 0.0), _MAX_SECONDS),
            deadline_met=None
            if attempt.deadline is None
            else ok and finished_at <= attempt.deadline,
        )
        service = _service(getattr(task, "app", None), None)
        service.record_outcome(priority, attempt.decision_id, outcome)
    except Exception:
        log.exception("aiassist: outcome of task %s not recorded", task_id)


def _connect_signals() -> None:
    """Connect the handlers (once per process: `dispatch_uid` makes it idempotent); they
    ignore tasks without aiassist headers."""
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="aiassist.prerun")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="aiassist.failure")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="aiassist.postrun")
