"""Dispatchers: how a producer stage shares its events among its consumers (GenStage's dispatchers).

- ``DemandDispatcher`` (the default): each event goes to one consumer, the one with the most demand.
- ``BroadcastDispatcher``: every event goes to every consumer, so the pace is the slowest consumer's.
- ``PartitionDispatcher``: each event goes to the consumer of its partition (``hash(event)``); each
  partition has its own demand, and events of a partition nobody asked for wait in that partition's queue.

A dispatcher only keeps the books; its stage sends. ``subscribe``/``cancel`` change the consumers,
``ask`` adds a consumer's demand, ``dispatch(events)`` says which consumer gets which events and returns the
ones nobody had demand for (the stage's buffer keeps them), ``wanted`` is the demand the stage may still ask
its own source for. Everything runs in the stage's own task: no locks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["BroadcastDispatcher", "DemandDispatcher", "Dispatcher", "PartitionDispatcher"]

Ref = Hashable


class Dispatcher:
    """The dispatcher interface; see the module docstring."""

    def subscribe(self, ref: Ref, opts: dict[str, Any]) -> None:
        """A consumer subscribed (``opts`` are its subscription options)."""
        raise NotImplementedError

    def cancel(self, ref: Ref) -> list[Any]:
        """A consumer left; returns events that were waiting for it alone (to be buffered again)."""
        raise NotImplementedError

    def ask(self, ref: Ref, n: int) -> None:
        """The consumer ``ref`` asked for ``n`` more events."""
        raise NotImplementedError

    def dispatch(self, events: Sequence[Any]) -> tuple[list[tuple[Ref, list[Any]]], list[Any]]:
        """Who gets what of ``events`` now, and what is left over."""
        raise NotImplementedError

    def wanted(self) -> int:
        """Events the stage could hand out right now."""
        raise NotImplementedError

    def refs(self) -> list[Ref]:
        """The subscribed consumers."""
        raise NotImplementedError


class _DemandPerConsumer(Dispatcher):
    """The books of dispatchers that keep one demand count per consumer."""

    def __init__(self) -> None:
        self._demand: dict[Ref, int] = {}

    def subscribe(self, ref: Ref, opts: dict[str, Any]) -> None:
        """Add the consumer with no demand yet."""
        self._demand[ref] = 0

    def cancel(self, ref: Ref) -> list[Any]:
        """Forget the consumer (its demand goes with it)."""
        self._demand.pop(ref, None)
        return []

    def ask(self, ref: Ref, n: int) -> None:
        """Add to the consumer's demand."""
        if ref in self._demand:
            self._demand[ref] += n

    def refs(self) -> list[Ref]:
        """The subscribed consumers."""
        return list(self._demand)


class DemandDispatcher(_DemandPerConsumer):
    """Each event to one consumer: the one with the most outstanding demand first (GenStage's default)."""

    def wanted(self) -> int:
        """The sum of every consumer's demand."""
        return sum(self._demand.values())

    def dispatch(self, events: Sequence[Any]) -> tuple[list[tuple[Ref, list[Any]]], list[Any]]:
        """Fill the hungriest consumers first, each with a contiguous slice."""
        out: list[tuple[Ref, list[Any]]] = []
        i, n = 0, len(events)
        if n == 0:
            return out, []
        for ref, demand in sorted(self._demand.items(), key=lambda kv: -kv[1]):
            if i >= n or demand <= 0:
                break
            take = min(demand, n - i)
            out.append((ref, list(events[i : i + take])))
            self._demand[ref] = demand - take
            i += take
        return out, list(events[i:])


class BroadcastDispatcher(_DemandPerConsumer):
    """Every event to every consumer; the stage may hand out as many as its slowest consumer asked for."""

    def wanted(self) -> int:
        """The smallest demand of any consumer (0 without consumers)."""
        return min(self._demand.values(), default=0)

    def dispatch(self, events: Sequence[Any]) -> tuple[list[tuple[Ref, list[Any]]], list[Any]]:
        """The same first ``wanted()`` events to everyone; the rest wait."""
        take = min(self.wanted(), len(events))
        if take == 0:
            return [], list(events)
        sent = list(events[:take])
        for ref in self._demand:
            self._demand[ref] -= take
        return [(ref, sent) for ref in self._demand], list(events[take:])


class PartitionDispatcher(Dispatcher):
    """Each event to its partition's consumer; ``hash(event)`` names the partition (or None to drop it).

    ``partitions`` is a count (partitions ``0..n-1``) or a list of names; each consumer subscribes with
    ``partition=<name>``. Events for a partition without demand wait in that partition's queue, which counts
    towards what the stage holds; ``wanted`` is the demand of every partition beyond its queue.
    """

    def __init__(self, partitions: int | Sequence[Hashable], hash: Callable[[Any], Hashable | None]) -> None:
        names = list(range(partitions)) if isinstance(partitions, int) else list(partitions)
        if not names:
            raise ValueError("PartitionDispatcher needs at least one partition")
        self.partitions = names
        self._hash = hash
        self._consumer: dict[Hashable, Ref | None] = dict.fromkeys(names)
        self._partition_of: dict[Ref, Hashable] = {}
        self._demand: dict[Hashable, int] = dict.fromkeys(names, 0)
        self._queued: dict[Hashable, deque[Any]] = {p: deque() for p in names}
        self.dropped = 0  # events whose hash was None

    def subscribe(self, ref: Ref, opts: dict[str, Any]) -> None:
        """Bind the consumer to ``opts["partition"]``, which must exist and be free."""
        partition = opts.get("partition")
        if partition not in self._consumer:
            raise ValueError(f"subscription partition {partition!r} is not one of {self.partitions!r}")
        if self._consumer[partition] is not None:
            raise ValueError(f"partition {partition!r} already has a consumer")
        self._consumer[partition] = ref
        self._partition_of[ref] = partition
        self._demand[partition] = 0

    def cancel(self, ref: Ref) -> list[Any]:
        """Unbind the consumer; its partition's queued events stay queued for the next one."""
        partition = self._partition_of.pop(ref, None)
        if partition is not None:
            self._consumer[partition] = None
            self._demand[partition] = 0
        return []

    def ask(self, ref: Ref, n: int) -> None:
        """Add to the demand of the consumer's partition."""
        partition = self._partition_of.get(ref)
        if partition is not None:
            self._demand[partition] += n

    def wanted(self) -> int:
        """Demand not already covered by queued events, summed over partitions."""
        return sum(max(0, self._demand[p] - len(self._queued[p])) for p in self.partitions)

    def refs(self) -> list[Ref]:
        """The subscribed consumers."""
        return list(self._partition_of)

    @property
    def queued(self) -> int:
        """Events waiting in partition queues."""
        return sum(len(q) for q in self._queued.values())

    def dispatch(self, events: Sequence[Any]) -> tuple[list[tuple[Ref, list[Any]]], list[Any]]:
        """Queue each event on its partition, then send every partition what its demand allows."""
        for event in events:
            partition = self._hash(event)
            if partition is None:
                self.dropped += 1
                continue
            queue = self._queued.get(partition)
            if queue is None:
                raise ValueError(f"event hashed to partition {partition!r}, not one of {self.partitions!r}")
            queue.append(event)
        out: list[tuple[Ref, list[Any]]] = []
        for partition in self.partitions:
            ref, queue, demand = self._consumer[partition], self._queued[partition], self._demand[partition]
            if ref is None or demand <= 0 or not queue:
                continue
            take = min(demand, len(queue))
            out.append((ref, [queue.popleft() for _ in range(take)]))
            self._demand[partition] = demand - take
        return out, []
