"""`TaskQueue`: the order in which a worker pool takes queued tasks, shared by the asyncio
dispatcher and the simulator, so that the benchmark measures the policy that really runs.

Three heaps over the same tasks:

- **by priority**: `enqueued_at - boost_s` (`order_key`), smallest first, with the boost
  capped at `bound_s`: a task is overtaken only by tasks enqueued less than `bound_s` after
  it, so nothing starves;
- **by latest start** (tasks with a deadline), feeding the **rescue window**: once a task's
  latest start is less than `rescue_s` away, it enters the window, ordered by deadline
  (earliest deadline first, as EDF). When a free worker asks for a task and the window is
  not empty, the window's first task goes first: a more important task with time to spare
  must not make a less important one miss a deadline it could still meet. Deadline order,
  not latest-start order, within the window: the duration estimate decides when a task
  needs rescuing, but not which of the tasks that need it goes first (a long task's
  estimate errs by more, and ordering by it again made more tasks miss in the benchmark).
  A task already past its latest start is not rescued (by its estimate it misses anyway;
  starting it first would only make others miss too, the domino effect of earliest
  deadline first under overload): it keeps its place in the priority order.
- **The gap**: the rescue yields to the first task in priority order when that task's
  business-weight head start (`weight_boost_s`) exceeds the rescued task's by more than
  `gap_s`. A deadline of routine work is kept against work of comparable importance, not
  against work that matters several times more: in a long burst the window is never empty,
  and without the gap every task, however important, would wait until its own latest start.

Starvation: once the first task in priority order has waited `bound_s`, every fourth start
goes to the priority order even while rescues are pending. Rescues cannot then hold back a
waiting task for ever, yet in a long overload most starts still go to deadlines that can be
kept. The heaps are lazy: a task taken from one is skipped when it reaches the top of
another. Push and pop are O(log n), amortized.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["Placement", "TaskQueue"]

T = TypeVar("T")

_OVERDUE_EVERY = 4  # see "Starvation" above


class Placement(Protocol):
    """Where a decision puts a task (a `PriorityDecision` is one): the queue reads no more,
    so it does not import the module that decides."""

    @property
    def boost_s(self) -> float: ...
    @property
    def latest_start_s(self) -> float | None: ...
    @property
    def weight_boost_s(self) -> float: ...


class _Entry(Generic[T]):
    __slots__ = ("deadline", "enqueued_at", "item", "latest_start", "taken", "weight_boost")

    def __init__(
        self,
        item: T,
        enqueued_at: float,
        latest_start: float | None,
        deadline: float | None,
        weight_boost: float,
    ) -> None:
        self.item = item
        self.enqueued_at = enqueued_at
        self.latest_start = latest_start
        self.deadline = deadline
        self.weight_boost = weight_boost
        self.taken = False


_Heap = list[tuple[float, int, _Entry[T]]]


class TaskQueue(Generic[T]):
    """Queued tasks in the order a free worker should take them (see the module docstring).

    Times are seconds on any one clock (the event loop's, a simulation's): `enqueued_at`
    when pushing, `now` when popping. `gap_s` defaults to no gap (the rescue never yields).
    """

    def __init__(self, *, rescue_s: float, bound_s: float, gap_s: float = math.inf) -> None:
        if rescue_s < 0 or bound_s < 0 or gap_s < 0:
            raise ValueError("rescue_s, bound_s and gap_s must be >= 0")
        self.rescue_s = rescue_s
        self.bound_s = bound_s
        self.gap_s = gap_s
        self._by_priority: _Heap[T] = []
        self._by_latest_start: _Heap[T] = []  # not yet in the rescue window
        self._window: _Heap[T] = []  # by deadline
        self._seq = itertools.count()
        self._len = 0
        self.rescued = 0  # tasks taken out of priority order, since creation
        self._overdue_turn = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        """The queued tasks, in no particular order."""
        return (e.item for _, _, e in self._by_priority if not e.taken)

    def push(
        self,
        item: T,
        enqueued_at: float,
        boost_s: float,
        latest_start_s: float | None,
        *,
        deadline_s: float | None = None,
        weight_boost_s: float = 0.0,
    ) -> None:
        """Queue `item`; `boost_s`, `latest_start_s` and `weight_boost_s` as in
        `PriorityDecision`, `deadline_s` as the features' `deadline_in_s` (all relative to
        `enqueued_at`; None: no deadline; a deadline not given is taken to be the latest
        start)."""
        key = enqueued_at - min(max(boost_s, 0.0), self.bound_s)
        latest = deadline = None
        if latest_start_s is not None:
            latest = enqueued_at + latest_start_s
            deadline = latest if deadline_s is None else enqueued_at + deadline_s
        entry = _Entry(item, enqueued_at, latest, deadline, weight_boost_s)
        seq = next(self._seq)
        heapq.heappush(self._by_priority, (key, seq, entry))
        if latest is not None:
            heapq.heappush(self._by_latest_start, (latest, seq, entry))
        self._len += 1

    def push_decision(
        self, item: T, enqueued_at: float, decision: Placement, deadline_in_s: float | None
    ) -> None:
        """Queue `item` as the `priority` module decided, for a task whose deadline is
        `deadline_in_s` after `enqueued_at` (the features' own)."""
        self.push(
            item,
            enqueued_at,
            decision.boost_s,
            decision.latest_start_s,
            deadline_s=deadline_in_s,
            weight_boost_s=decision.weight_boost_s,
        )

    def pop(self, now: float) -> T:
        """The task a free worker should start at `now`. IndexError when empty."""
        by_priority, window = self._by_priority, self._window
        while by_priority and by_priority[0][2].taken:
            heapq.heappop(by_priority)
        if not by_priority:
            raise IndexError("pop from an empty TaskQueue")
        self._fill_window(now)
        while window and self._unsaveable(window[0][2], now):
            heapq.heappop(window)  # taken already, or past saving: priority order decides
        entry = by_priority[0][2]
        rescue = bool(window)
        if rescue and now - entry.enqueued_at >= self.bound_s:
            # The priority top has waited out the bound: one start in four is its.
            self._overdue_turn = (self._overdue_turn + 1) % _OVERDUE_EVERY
            rescue = self._overdue_turn != 0
        elif rescue:
            rescue = entry.weight_boost - window[0][2].weight_boost <= self.gap_s
        if rescue:
            entry = heapq.heappop(window)[2]
            if entry is not by_priority[0][2]:
                self.rescued += 1
        else:
            heapq.heappop(by_priority)
        entry.taken = True
        self._len -= 1
        return entry.item

    def _fill_window(self, now: float) -> None:
        """Move the tasks whose latest start is now less than `rescue_s` away to the window."""
        by_latest, window = self._by_latest_start, self._window
        while by_latest and by_latest[0][0] <= now + self.rescue_s:
            _, seq, entry = heapq.heappop(by_latest)
            if not self._unsaveable(entry, now):
                assert entry.deadline is not None  # every task with a latest start has one
                heapq.heappush(window, (entry.deadline, seq, entry))

    @staticmethod
    def _unsaveable(entry: _Entry[T], now: float) -> bool:
        return entry.taken or (entry.latest_start is not None and entry.latest_start < now)
