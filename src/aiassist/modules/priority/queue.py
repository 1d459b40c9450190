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

**Head starts grow with the waits**: head starts are seconds, sized for waits of minutes.
When tasks wait for hours (a batch cluster near full load), fixed seconds stop ordering
anything: work that has aged past the bound overtakes work that matters more, and the
order collapses to first come, first served. So the priority order scales every head
start (and the bound) by `max(1, wait_scale x longest recent wait / bound_s)`, the longest
of the last 256 starts' waits; the heap is re-keyed when the scale moves by a quarter.

**Starvation**: once the oldest queued task has waited `bound_s` (unscaled), every fourth
start goes to the oldest task, whatever the priority order and the rescue say: work that
ages past the bound keeps a bounded share of the starts, and the rest still go by
priority. The heaps are lazy: a task taken from one is skipped when it reaches the top of
another. Push and pop are O(log n), amortized; a re-key is O(n) and rare.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["Placement", "TaskQueue"]

T = TypeVar("T")

_OVERDUE_EVERY = 4  # see "Starvation" above
_RECENT = 256  # starts whose waits set the scale
_RESCALE_EVERY = 32  # starts between looks at the scale
_RESCALE_STEP = 1.25  # the scale moves (and the heap is re-keyed) by at least this factor


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
    __slots__ = (
        "boost", "deadline", "enqueued_at", "item", "latest_start", "taken", "weight_boost",
    )  # fmt: skip

    def __init__(
        self,
        item: T,
        enqueued_at: float,
        boost: float,
        latest_start: float | None,
        deadline: float | None,
        weight_boost: float,
    ) -> None:
        self.item = item
        self.enqueued_at = enqueued_at
        self.boost = boost
        self.latest_start = latest_start
        self.deadline = deadline
        self.weight_boost = weight_boost
        self.taken = False


_Heap = list[tuple[float, int, _Entry[T]]]


class TaskQueue(Generic[T]):
    """Queued tasks in the order a free worker should take them (see the module docstring).

    Times are seconds on any one clock (the event loop's, a simulation's): `enqueued_at`
    when pushing, `now` when popping. `gap_s` defaults to no gap (the rescue never yields);
    `wait_scale` 0 keeps head starts in fixed seconds.
    """

    def __init__(
        self, *, rescue_s: float, bound_s: float, gap_s: float = math.inf, wait_scale: float = 0.0
    ) -> None:
        if min(rescue_s, bound_s, gap_s, wait_scale) < 0:
            raise ValueError("rescue_s, bound_s, gap_s and wait_scale must be >= 0")
        self.rescue_s = rescue_s
        self.bound_s = bound_s
        self.gap_s = gap_s
        self.wait_scale = wait_scale
        self.scale = 1.0  # what head starts are multiplied by now
        self._recent: collections.deque[float] = collections.deque(maxlen=_RECENT)
        self._by_priority: _Heap[T] = []
        self._by_arrival: _Heap[T] = []
        self._by_latest_start: _Heap[T] = []  # not yet in the rescue window
        self._window: _Heap[T] = []  # by deadline
        self._seq = itertools.count()
        self._len = 0
        self.rescued = 0  # tasks taken out of priority order, since creation
        self._overdue_turn = 0
        self._starts = 0

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
        boost = min(max(boost_s, 0.0), self.bound_s)
        latest = deadline = None
        if latest_start_s is not None:
            latest = enqueued_at + latest_start_s
            deadline = latest if deadline_s is None else enqueued_at + deadline_s
        entry = _Entry(item, enqueued_at, boost, latest, deadline, weight_boost_s)
        seq = next(self._seq)
        heapq.heappush(self._by_priority, (enqueued_at - boost * self.scale, seq, entry))
        heapq.heappush(self._by_arrival, (enqueued_at, seq, entry))
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
        by_priority, window, by_arrival = self._by_priority, self._window, self._by_arrival
        for heap in (by_priority, by_arrival):
            while heap and heap[0][2].taken:
                heapq.heappop(heap)
        if not by_priority:
            raise IndexError("pop from an empty TaskQueue")
        if now - by_arrival[0][2].enqueued_at >= self.bound_s:
            # The oldest task has waited out the bound: one start in four is its.
            self._overdue_turn = (self._overdue_turn + 1) % _OVERDUE_EVERY
            if self._overdue_turn == 0:
                return self._take(heapq.heappop(by_arrival)[2], now)
        self._fill_window(now)
        while window and self._unsaveable(window[0][2], now):
            heapq.heappop(window)  # taken already, or past saving: priority order decides
        top = by_priority[0][2]
        if window and top.weight_boost - window[0][2].weight_boost <= self.gap_s:
            entry = heapq.heappop(window)[2]
            self.rescued += entry is not top
            return self._take(entry, now)
        return self._take(heapq.heappop(by_priority)[2], now)

    def _take(self, entry: _Entry[T], now: float) -> T:
        entry.taken = True
        self._len -= 1
        if self.wait_scale:
            self._recent.append(now - entry.enqueued_at)
            self._starts += 1
            if self._starts % _RESCALE_EVERY == 0:
                self._rescale()
        return entry.item

    def _rescale(self) -> None:
        """Follow the waits (see "Head starts grow with the waits" above)."""
        longest = max(self._recent)
        scale = max(1.0, self.wait_scale * longest / self.bound_s) if self.bound_s else 1.0
        if 1 / _RESCALE_STEP < scale / self.scale < _RESCALE_STEP:
            return
        self.scale = scale
        self._by_priority = [
            (e.enqueued_at - e.boost * scale, seq, e)
            for _, seq, e in self._by_priority
            if not e.taken
        ]
        heapq.heapify(self._by_priority)

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
