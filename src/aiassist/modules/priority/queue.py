"""`TaskQueue`: the order in which a worker pool takes queued tasks, shared by the asyncio
dispatcher and the simulator, so that the benchmark measures the policy that really runs.

Two heaps over the same tasks:

- **by priority**: `enqueued_at - boost_s` (`order_key`), smallest first, with the boost
  capped at `bound_s`: a task is overtaken only by tasks enqueued less than `bound_s` after
  it, so nothing starves;
- **by latest start** (tasks with a deadline): the **rescue**. When a free worker asks for a
  task and the earliest latest start among the queued tasks is less than `rescue_s` away,
  that task goes first: a more important task with time to spare must not make a
  less important one miss a deadline it could still meet. A task already past its latest
  start is not rescued (by its estimate it misses anyway; starting it first would only make
  others miss too, the domino effect of earliest deadline first under overload): it keeps
  its place in the priority order.

Starvation: once the first task in priority order has waited `bound_s`, every fourth start
goes to the priority order even while rescues are pending. Rescues cannot then hold back a
waiting task for ever, yet in a long overload most starts still go to deadlines that can be
kept. Both heaps are lazy: a task taken from one is skipped when it reaches the top of the
other. Push and pop are O(log n), amortized.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["TaskQueue"]

T = TypeVar("T")

_OVERDUE_EVERY = 4  # see "Starvation" above


class _Entry(Generic[T]):
    __slots__ = ("enqueued_at", "item", "latest_start", "taken")

    def __init__(self, item: T, enqueued_at: float, latest_start: float | None) -> None:
        self.item = item
        self.enqueued_at = enqueued_at
        self.latest_start = latest_start
        self.taken = False


class TaskQueue(Generic[T]):
    """Queued tasks in the order a free worker should take them (see the module docstring).

    Times are seconds on any one clock (the event loop's, a simulation's): `enqueued_at`
    when pushing, `now` when popping.
    """

    def __init__(self, *, rescue_s: float, bound_s: float) -> None:
        if rescue_s < 0 or bound_s < 0:
            raise ValueError("rescue_s and bound_s must be >= 0")
        self.rescue_s = rescue_s
        self.bound_s = bound_s
        self._by_priority: list[tuple[float, int, _Entry[T]]] = []
        self._by_latest_start: list[tuple[float, int, _Entry[T]]] = []
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
        self, item: T, enqueued_at: float, boost_s: float, latest_start_s: float | None
    ) -> None:
        """Queue `item`; `boost_s` and `latest_start_s` as in `PriorityDecision` (the latest
        start relative to `enqueued_at`; None: no deadline)."""
        key = enqueued_at - min(max(boost_s, 0.0), self.bound_s)
        latest = None if latest_start_s is None else enqueued_at + latest_start_s
        entry = _Entry(item, enqueued_at, latest)
        seq = next(self._seq)
        heapq.heappush(self._by_priority, (key, seq, entry))
        if latest is not None:
            heapq.heappush(self._by_latest_start, (latest, seq, entry))
        self._len += 1

    def pop(self, now: float) -> T:
        """The task a free worker should start at `now`. IndexError when empty."""
        by_priority, by_latest = self._by_priority, self._by_latest_start
        while by_priority and by_priority[0][2].taken:
            heapq.heappop(by_priority)
        while by_latest and (by_latest[0][2].taken or by_latest[0][0] < now):
            heapq.heappop(by_latest)  # taken already, or past saving: priority order decides
        if not by_priority:
            raise IndexError("pop from an empty TaskQueue")
        entry = by_priority[0][2]
        rescue = bool(by_latest) and by_latest[0][0] <= now + self.rescue_s
        if rescue and now - entry.enqueued_at >= self.bound_s:
            # The priority top has waited out the bound: one start in four is its.
            self._overdue_turn = (self._overdue_turn + 1) % _OVERDUE_EVERY
            rescue = self._overdue_turn != 0
        if rescue:
            entry = heapq.heappop(by_latest)[2]
            if entry is not by_priority[0][2]:
                self.rescued += 1
        else:
            heapq.heappop(by_priority)
        entry.taken = True
        self._len -= 1
        return entry.item
