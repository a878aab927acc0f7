"""RedisStreamProducer: a pipeline fed by a Redis Stream through a consumer group, acked after success.

What it guarantees (the project's shared PIPELINES.md has the Redis facts behind each line):

- **At least once in, exactly once out.** A message is XACKed only after its batch succeeded. Its result
  (``results_stream``) or dead letter is written by the same server-side script that acks it, and only if
  that XACK removed it from the pending list (``scripts.ACK_AND_WRITE``): after any crash each input id
  appears exactly once in the results or the dead letters.
- **Attempts counted by the broker.** The attempt number is the entry's delivery count, which Redis raises
  at every redelivery: a consumer killed by SIGKILL or the OOM killer still used an attempt. Failures are
  retried with exponential backoff and jitter; past ``max_attempts``, or at once for an error that cannot
  succeed on retry (``ValueError``/``TypeError``, e.g. the kernel's shape errors), the message goes to the
  dead-letter stream with its reason, its attempts and its original fields.
- **Nothing stranded.** A stable consumer name (``consumer_name``); at start the producer first takes back
  its own pending entries, then reads new ones; a janitor claims entries of dead consumers idle longer than
  ``claim_idle``; the producer renews the lease of everything it holds, so a long batch is never stolen.
- **Demand-sized reads.** ``XREADGROUP COUNT <outstanding demand> BLOCK <block>``: nothing is fetched that no
  stage asked for, so a drain leaves nothing behind in a hidden buffer. Acks from concurrent batches are
  coalesced into one command.
- **Bounded memory.** Entries every group has acked are trimmed (``retention="acked"``).
- **Known durability.** At start it reads the server's persistence and warns when a restart of Redis can
  lose acks; ``durable=True`` refuses to start then. Redis 7.0 (Debian's) is enough: nothing here needs 8.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from otpserve.flow.message import Message
from otpserve.flow.producer import Producer
from otpserve.flow.redis import scripts
from otpserve.flow.redis.consumer_name import slot_consumer_name
from otpserve.flow.redis.durability import Durability, check_durability
from otpserve.metrics import Counter, Gauge, Registry

if TYPE_CHECKING:
    from otpserve.flow.topology.producer_stage import ProducerStage

__all__ = ["RedisStreamProducer", "RetryPolicy"]

log = logging.getLogger("otpserve.flow.redis")

TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)

EMITTED, WAITING, ACKING = "emitted", "waiting", "acking"


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed message is tried again, and when it becomes a dead letter.

    Attempt n (n = the broker's delivery count) that failed with a retryable error is tried again after a
    delay drawn from ``[d/2, d]``, ``d = min(backoff_max, backoff_initial * 2**(n-1))`` (exponential backoff
    with "equal jitter": retries of many messages spread out, none comes back at once). Defaults: 5 attempts
    (arq's ``max_tries``), first retry after 0.5–1 s, none later than a minute (Celery caps at 600 s,
    Dramatiq starts at 15 s: both tuned for jobs, not for a serving pipeline).
    """

    max_attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    # Errors that fail the same way every time: no retry, straight to the dead letters.
    dead_letter_on: tuple[type[BaseException], ...] = (ValueError, TypeError)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not (0 <= self.backoff_initial <= self.backoff_max):
            raise ValueError(
                f"need 0 <= backoff_initial <= backoff_max, got {self.backoff_initial!r}, {self.backoff_max!r}"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt ``attempt``."""
        d = min(self.backoff_max, self.backoff_initial * 2 ** max(0, attempt - 1))
        return d / 2 + random.random() * d / 2

    def retryable(self, reason: Any) -> bool:
        """Whether a failure with ``reason`` may succeed on another attempt."""
        return not isinstance(reason, self.dead_letter_on)


class _Held:
    """A message this producer handed out and has not seen acked."""

    __slots__ = ("due", "fields", "message", "state")

    def __init__(self, message: Message, fields: dict[str, bytes]) -> None:
        self.message = message
        self.fields = fields  # the entry as read, for its dead letter
        self.state = EMITTED
        self.due = 0.0


@dataclass
class _AckBatch:
    records: list[tuple[str, str, list[Any]]]  # (kind 'a'|'r'|'d', id, flat fields)
    future: asyncio.Future[list[int]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reason_text(reason: Any) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


class RedisStreamProducer(Producer):
    """Messages from ``stream`` through the consumer group ``group``; see the module docstring."""

    def __init__(
        self,
        *,
        stream: str,
        url: str = "redis://127.0.0.1:6379/0",
        group: str = "otpserve",
        consumer: str | None = None,
        start_id: str = "0",
        block: float = 0.1,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        claim_idle: float = 60.0,
        claim_interval: float = 5.0,
        results_stream: str | None = None,
        dead_letter_stream: str | None = None,
        retention: str | None = "acked",
        trim_interval: float = 5.0,
        durable: bool = False,
        stats_interval: float = 1.0,
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty string, got {stream!r}")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
        for name, value in (("block", block), ("claim_idle", claim_idle), ("claim_interval", claim_interval)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if retention not in ("acked", None):
            raise ValueError(f"retention must be 'acked' or None, got {retention!r}")
        self.stream, self.url, self.group = stream, url, group
        self._consumer = consumer
        self.start_id = start_id
        self.block_ms = max(1, int(block * 1000))
        if retry is None:
            retry = RetryPolicy(max_attempts=max_attempts) if max_attempts is not None else RetryPolicy()
        elif max_attempts is not None:
            raise ValueError("give retry= or max_attempts=, not both")
        self.retry = retry
        self.claim_idle_ms = int(claim_idle * 1000)
        self.claim_interval = claim_interval
        self.results_stream = results_stream
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self.retention = retention
        self.trim_interval = trim_interval
        self.durable = durable
        self.stats_interval = stats_interval
        self._held: dict[str, _Held] = {}
        self._due: list[tuple[float, str]] = []  # retry heap
        self._lost: list[str] = []  # handed downstream, lost in a crash there: claim again
        self._demand = 0
        self._wake = asyncio.Event()
        self._acks: list[_AckBatch] = []
        self._ack_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._fetchers: list[asyncio.Task[None]] = []
        self._draining = False
        self._stopped = False
        self._recovering = True  # own pending entries first
        self._recover_from = "-"
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self.durability: Durability | None = None
        self.lag: int | None = None
        self.pending: int | None = None
        self._registry = Registry()
        r = self._registry
        self.messages = r.add(Counter("otpserve_pipeline_messages_total", "Messages by outcome."))
        self.fetched = r.add(Counter("otpserve_pipeline_fetched_total", "Entries handed out, by how they were got."))
        self.duplicates = r.add(
            Counter("otpserve_pipeline_duplicates_suppressed_total", "Acks of entries another consumer had acked.")
        )
        self.redis_errors = r.add(Counter("otpserve_pipeline_redis_errors_total", "Redis commands that failed."))
        r.add(
            Gauge("otpserve_pipeline_lag", "Entries of the stream the group has not read yet.", lambda: self.lag or 0)
        )
        r.add(
            Gauge(
                "otpserve_pipeline_pending", "Entries delivered to the group and not acked.", lambda: self.pending or 0
            )
        )
        r.add(
            Gauge(
                "otpserve_pipeline_held",
                "Entries this consumer holds (in flight or waiting to retry).",
                lambda: len(self._held),
            )
        )

    # ---- lifecycle -----------------------------------------------------------------------------------

    @property
    def consumer(self) -> str:
        """This producer's consumer name in the group."""
        assert self._consumer is not None
        return self._consumer

    async def start(self, stage: ProducerStage, index: int) -> None:
        """Connect, check durability, create the group if needed, start the fetch and janitor tasks."""
        self.stage = stage
        if self._consumer is None:
            self._consumer = slot_consumer_name(self.url, self.stream, self.group, index)
        self.redis = aioredis.from_url(self.url, decode_responses=False, health_check_interval=0)
        self.durability = await check_durability(self.redis, self.durable)
        await self._ensure_group()
        self._ack_script = self.redis.register_script(scripts.ACK_AND_WRITE)
        self._ack_joined = self.redis.register_script(scripts.ACK_JOINED)
        # The two commands of every batch (the read, the ack) go over connections of their own, straight to
        # redis-py's connection layer: the client's path (pool, retry wrapper, locks) costs ~100 us a command
        # on these machines, ~2 us a message at batches of 100; our loops already retry.
        self._read_conn = self.redis.connection_pool.make_connection()
        self._ack_conn = self.redis.connection_pool.make_connection()
        self._renew_script = self.redis.register_script(scripts.RENEW)
        self._trim_script = self.redis.register_script(scripts.TRIM)
        loop = asyncio.get_running_loop()
        # One reader: a second one, reading while the first one's reply is on its way, measured no faster
        # (8 alternating runs of bench/pipeline.py's trivial section, within the noise).
        self._fetchers = [loop.create_task(self._fetch_loop(), name=f"{self.consumer} fetch")]
        self._tasks = [
            *self._fetchers,
            loop.create_task(self._ack_loop(), name=f"{self.consumer} acks"),
            loop.create_task(self._janitor_loop(), name=f"{self.consumer} janitor"),
        ]
        log.info(
            "%s: consuming %s as %s/%s (%s)", stage, self.stream, self.group, self.consumer, self.durability.describe()
        )

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def handle_demand(self, demand: int) -> None:
        """Remember the demand; the fetch task reads that many (never more) and pushes them."""
        self._demand += demand
        self._wake.set()

    def prepare_for_draining(self) -> None:
        """Stop fetching; what is in flight still gets acked."""
        self._draining = True
        self._wake.set()
        for task in self._fetchers:
            task.cancel()  # a blocking read in flight: its entries stay pending, re-read at restart

    def redeliver_lost(self) -> None:
        """The stages downstream restarted: everything handed out and not being acked is claimed again."""
        lost = [eid for eid, held in self._held.items() if held.state == EMITTED]
        if lost:
            log.warning(
                "%s: %d messages were lost in a crash downstream; handing them out again", self.consumer, len(lost)
            )
            self._lost.extend(lost)
            self._wake.set()

    async def stop(self) -> None:
        """Flush the acks still queued (briefly), stop the tasks, close the connection."""
        self._draining = True
        self._stopped = True
        acks, janitor = self._tasks[-2:] if self._tasks else (None, None)
        for task in (*self._fetchers, janitor):
            if task is not None:
                task.cancel()
        if acks is not None:
            if self._acks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flushed(), 5.0)
            acks.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for batch in self._acks:  # not written: those entries stay pending and are redelivered
            if not batch.future.done():
                batch.future.cancel()
        self._acks.clear()
        for conn in (getattr(self, "_read_conn", None), getattr(self, "_ack_conn", None)):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def _flushed(self) -> None:
        while self._acks:
            await asyncio.gather(*(b.future for b in list(self._acks)), return_exceptions=True)

    # ---- fetching ------------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        try:
            await self._fetch_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # let it crash: the producer stage dies with it and is restarted
            log.exception("%s: fetching from %s failed", self.consumer, self.stream)
            self.stage.crash(exc)

    async def _fetch_forever(self) -> None:
        backoff = 0.05
        while not self._draining:
            want = self._demand
            if want <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                got = await self._fetch(want)
                backoff = 0.05
            except TRANSIENT as exc:
                backoff = await self._wait_out("read", f"reading {self.stream}", exc, backoff)
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream or group was deleted (or Redis lost its data): recreate
                    log.error("%s: group %s is gone (%s); creating it again", self.consumer, self.group, exc)
                    with contextlib.suppress(Exception):
                        await self._ensure_group()
                    continue
                raise
            if got:
                self._emit(got)

    async def _wait_out(self, command: str, doing: str, exc: BaseException, backoff: float) -> float:
        """Redis is away (restarting, loading, a dropped connection): count it, log it, wait; the next wait."""
        self.redis_errors.inc(labels=(("command", command),))
        log.warning("%s: %s failed (%s); retrying in %.2f s", self.consumer, doing, exc, backoff)
        await asyncio.sleep(backoff)
        return min(2.0, backoff * 2)

    def _emit(self, messages: list[Message]) -> None:
        self._demand -= len(messages)
        self.stage.push_messages(messages)

    async def _fetch(self, demand: int) -> list[Message]:
        """At most ``demand`` messages: retries due, then lost ones, own pending, dead consumers', new."""
        got = await self._fetch_again(demand)
        if got is not None:
            return got
        reply = await self._command(
            self._read_conn,
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", demand, "BLOCK", self.block_ms,
            "STREAMS", self.stream, ">",
        )  # fmt: skip
        if not reply:
            return []
        # RESP3 answers a map {stream: entries}, RESP2 a list [[stream, entries]].
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        self.fetched.inc(len(entries), labels=(("how", "new"),))
        return self._take(entries, {})

    async def _fetch_again(self, demand: int) -> list[Message] | None:
        """Entries that were delivered before (retries, lost, own pending, dead consumers'), or None."""
        now = time.monotonic()
        due: list[str] = []
        while self._due and self._due[0][0] <= now and len(due) < demand:
            _, eid = heapq.heappop(self._due)
            held = self._held.get(eid)
            if held is not None and held.state == WAITING:
                due.append(eid)
        if due:
            return await self._claim_again(due, "retry")
        if self._lost:
            ids, self._lost = self._lost[:demand], self._lost[demand:]
            return await self._claim_again(ids, "lost")
        if self._recovering:
            got = await self._recover_own(demand)
            if got is not None:
                return got
        if time.monotonic() >= self._next_claim:
            got = await self._claim_dead(demand)
            if got:
                return got
        return None

    def _take(self, entries: list[Any], attempts: Mapping[str, int]) -> list[Message]:
        """Messages from XREADGROUP/XCLAIM entries; ``attempts`` is the delivery count where it is not 1."""
        # The hot loop of a pipeline's intake: a few dict operations an entry, nothing else.
        out = []
        dead = []
        stream, consumer, acknowledger, max_attempts = (
            self.stream,
            self._consumer,
            (self, None, None),
            self.retry.max_attempts,
        )
        held_map = self._held
        for raw_id, raw_fields in entries:
            if raw_fields is None:
                continue  # trimmed or deleted meanwhile: nothing to process
            eid = raw_id.decode()
            if isinstance(raw_fields, list):  # XREADGROUP's raw reply: k1, v1, k2, v2, ...
                # Field names from any producer: one that is not UTF-8 must not crash every consumer.
                fields = {
                    raw_fields[i].decode(errors="backslashreplace"): raw_fields[i + 1]
                    for i in range(0, len(raw_fields), 2)
                }
            else:
                fields = {k.decode(errors="backslashreplace"): v for k, v in raw_fields.items()}
            attempt = attempts.get(eid, 1) if attempts else 1
            message = Message(
                fields, acknowledger, {"id": eid, "stream": stream, "attempt": attempt, "consumer": consumer}
            )
            held = held_map.get(eid)
            if held is None:
                held_map[eid] = _Held(message, fields)
            else:
                held.message, held.state = message, EMITTED
            if attempt > max_attempts:
                dead.append(message)
            else:
                out.append(message)
        if dead:
            # Delivered more often than allowed without an ack: its consumers died (SIGKILL, OOM) or never
            # finished. It is not run again.
            for m in dead:
                m.failed(
                    f"delivered {m.metadata['attempt']} times without success (max_attempts="
                    f"{self.retry.max_attempts}); the last attempts did not finish (the consumer died?)"
                )
            self._send_acks([self._dead_record(m) for m in dead])
        return out

    async def _claim_again(self, ids: list[str], how: str) -> list[Message]:
        """XCLAIM our own entries again: Redis counts a delivery, and hands back the entry."""
        attempts = {eid: self._held[eid].message.metadata["attempt"] + 1 for eid in ids if eid in self._held}
        try:
            entries = await self.redis.xclaim(self.stream, self.group, self.consumer, 0, ids)
        except BaseException:
            # Not claimed (Redis away, a drain): keep them due, or their renewed leases would strand them.
            self._lost[:0] = [eid for eid in ids if eid in self._held]
            raise
        found = {(e[0].decode() if isinstance(e[0], bytes) else e[0]) for e in entries}
        for eid in ids:
            if eid not in found:  # acked meanwhile by a consumer that had claimed it, or deleted
                self._held.pop(eid, None)
        self.fetched.inc(len(entries), labels=(("how", how),))
        return self._take(entries, attempts)

    async def _recover_own(self, demand: int) -> list[Message] | None:
        """The entries still pending for our name from an earlier life, in order; None once done."""
        rows = await self.redis.xpending_range(
            self.stream, self.group, min=self._recover_from, max="+", count=demand, consumername=self.consumer
        )
        rows = [r for r in rows if _text(r["message_id"]) not in self._held]
        if not rows:
            self._recovering = False
            return None
        ids = [_text(r["message_id"]) for r in rows]
        last = ids[-1]
        attempts = {_text(r["message_id"]): int(r["times_delivered"]) + 1 for r in rows}
        entries = await self.redis.xclaim(self.stream, self.group, self.consumer, 0, ids)
        self._recover_from = "(" + last  # only past what was really taken back
        self.fetched.inc(len(entries), labels=(("how", "own_pending"),))
        if entries:
            log.info("%s: took back %d entries pending from an earlier run", self.consumer, len(entries))
        return self._take(entries, attempts)

    async def _claim_dead(self, demand: int) -> list[Message]:
        """The janitor: entries of other consumers idle past claim_idle become ours (XAUTOCLAIM)."""
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=demand
        )
        cursor, entries = _text(reply[0]), reply[1]
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._next_claim = time.monotonic() + self.claim_interval
        entries = [e for e in entries if e[1] is not None]
        if not entries:
            return []
        ids = [_text(e[0]) for e in entries]
        rows = await self.redis.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) * 4 + 10, consumername=self.consumer
        )
        attempts = {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}
        self.fetched.inc(len(entries), labels=(("how", "reclaimed"),))
        log.warning(
            "%s: reclaimed %d entries idle over %.0f s from dead consumers",
            self.consumer,
            len(entries),
            self.claim_idle_ms / 1000,
        )
        return self._take(entries, attempts)

    # ---- acking --------------------------------------------------------------------------------------

    def ack(self, ack_ref: Any, successful: list[Message], failed: list[Message]) -> asyncio.Future[Any] | None:
        """Results and acks for the successful; for the failed, a retry later or a dead letter now."""
        if self._stopped:
            # This producer's stage was restarted: nobody writes its acks any more. The entries stay pending
            # under the same consumer name, and its successor takes them back.
            return None
        if self.results_stream is None:
            records: list[tuple[str, str, list[Any]]] = [("a", m.metadata["id"], []) for m in successful]
        else:
            records = [self._result_record(m) for m in successful]
        now = time.monotonic()
        if failed:
            self.messages.inc(len(failed), labels=(("outcome", "failed"),))
        for m in failed:
            eid = m.metadata["id"]
            attempt = m.metadata["attempt"]
            held = self._held.get(eid)
            if self.retry.retryable(m.failure) and attempt < self.retry.max_attempts and held is not None:
                held.state = WAITING
                held.due = now + self.retry.delay(attempt)
                heapq.heappush(self._due, (held.due, eid))
                self.messages.inc(labels=(("outcome", "retried"),))
                self._wake.set()
                continue
            records.append(self._dead_record(m))
        if not records:
            return None
        return self._send_acks(records)

    def _result_record(self, m: Message) -> tuple[str, str, list[Any]]:
        eid = m.metadata["id"]
        if self.results_stream is None:
            return ("a", eid, [])
        data = m.data
        if not isinstance(data, Mapping):
            return (
                "d",
                eid,
                self._dead_fields(
                    m, f"TypeError: the result to write must be a mapping of fields, got {type(data).__name__}"
                ),
            )
        flat: list[Any] = ["id", eid]
        for k, v in data.items():
            if k != "id":
                flat += [k, v]
        return ("r", eid, flat)

    def _dead_record(self, m: Message) -> tuple[str, str, list[Any]]:
        return ("d", m.metadata["id"], self._dead_fields(m, _reason_text(m.failure)))

    def _dead_fields(self, m: Message, reason: str) -> list[Any]:
        eid = m.metadata["id"]
        held = self._held.get(eid)
        original = held.fields if held is not None else {}
        flat: list[Any] = ["id", eid, "reason", reason, "attempts", m.metadata["attempt"]]
        for k, v in original.items():
            flat += [f"original_{k}" if k in ("id", "reason", "attempts") else k, v]
        return flat

    def _send_acks(self, records: list[tuple[str, str, list[Any]]]) -> asyncio.Future[Any]:
        held_map = self._held
        for _, eid, _ in records:
            held = held_map.get(eid)
            if held is not None:
                held.state = ACKING
        batch = _AckBatch(records)
        self._acks.append(batch)
        self._ack_wake.set()

        def done(fut: asyncio.Future[list[int]]) -> None:
            held_map = self._held
            if fut.cancelled() or fut.exception() is not None:
                for _, eid, _ in records:  # not acked: still pending in Redis; it will come back
                    held = held_map.get(eid)
                    if held is not None and held.state == ACKING:
                        held.state = EMITTED
                return
            acked_n = dead_n = 0
            for (kind, eid, _), acked in zip(records, fut.result(), strict=True):
                held_map.pop(eid, None)
                if acked:
                    if kind == "d":
                        dead_n += 1
                    else:
                        acked_n += 1
            if acked_n:
                self.messages.inc(acked_n, labels=(("outcome", "acked"),))
            if dead_n:
                self.messages.inc(dead_n, labels=(("outcome", "dead_lettered"),))
            if len(records) > acked_n + dead_n:
                self.duplicates.inc(len(records) - acked_n - dead_n)

        batch.future.add_done_callback(done)
        return asyncio.shield(batch.future)

    async def _ack_loop(self) -> None:
        """Write queued acks, coalescing every batch that waits into one command; retry on Redis errors."""
        backoff = 0.05
        while True:
            if not self._acks:
                self._ack_wake.clear()
                await self._ack_wake.wait()
                continue
            batches = list(self._acks)
            records = [r for b in batches for r in b.records]
            try:
                acked = await self._write(records)
                backoff = 0.05
            except TRANSIENT as exc:
                backoff = await self._wait_out("ack", f"acking {len(records)} entries", exc, backoff)
                continue
            except Exception as exc:
                log.exception("%s: acking failed; the entries are handed out again", self.consumer)
                self._lost.extend(eid for b in batches for _, eid, _ in b.records)
                self._wake.set()
                for b in batches:
                    self._acks.remove(b)
                    if not b.future.done():
                        b.future.set_exception(exc)
                continue
            i = 0
            for b in batches:
                self._acks.remove(b)
                n = len(b.records)
                if not b.future.done():
                    b.future.set_result(acked[i : i + n])
                i += n

    async def _write(self, records: list[tuple[str, str, list[Any]]]) -> list[int]:
        if all(kind == "a" for kind, _, _ in records):
            # Plain acks write nothing, so no per-id answer is needed: one XACK for them all (a command per
            # id cost 5-10 us each in redis-py's packing, measured; that was most of a trivial pipeline's time),
            # with the ids in one argument (scripts.ACK_JOINED).
            joined = " ".join([eid for _, eid, _ in records])
            acked = await self._evalsha(self._ack_joined, [self.stream], [self.group, joined])
            return [1] * int(acked) + [0] * (len(records) - int(acked))
        keys = [self.stream, self.results_stream or f"{self.stream}:results", self.dead_letter_stream]
        reply = await self._evalsha(self._ack_script, keys, [self.group, scripts.pack_records(records)])
        return [int(x) for x in reply]

    async def _command(self, conn: Any, *args: Any) -> Any:
        """One command on a dedicated connection (connected again on next use after an error)."""
        try:
            await conn.send_command(*args)
            return await conn.read_response()
        except BaseException:
            # Cancelled mid-command (a drain) or failed: the reply may still come, so this connection is
            # out of step; close it.
            await asyncio.shield(conn.disconnect(nowait=True))
            raise

    async def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the ack connection, loading the script after a restart of Redis (NOSCRIPT)."""
        try:
            return await self._command(self._ack_conn, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._command(self._ack_conn, "SCRIPT", "LOAD", script.script)
            return await self._command(self._ack_conn, "EVALSHA", script.sha, len(keys), *keys, *args)

    # ---- the janitor: leases, retention, numbers -----------------------------------------------------

    async def _janitor_loop(self) -> None:
        renew_every = self.claim_idle_ms / 1000 / 4
        next_renew = time.monotonic() + renew_every
        next_trim = time.monotonic() + self.trim_interval
        while True:
            await asyncio.sleep(min(self.stats_interval, renew_every, self.trim_interval))
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + renew_every
                    await self._renew()
                if self.retention == "acked" and now >= next_trim:
                    next_trim = now + self.trim_interval
                    await self._trim_script(keys=[self.stream])
                await self._read_stats()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.redis_errors.inc(labels=(("command", "janitor"),))
                log.warning("%s: janitor step failed (%s)", self.consumer, exc)
            self._wake.set()  # retries may have come due

    async def _renew(self) -> None:
        ids = list(self._held)
        for i in range(0, len(ids), 500):
            lost = await self._renew_script(keys=[self.stream], args=[self.group, self.consumer, *ids[i : i + 500]])
            if lost:
                log.warning("%s: %d entries were claimed by another consumer meanwhile", self.consumer, len(lost))

    async def _read_stats(self) -> None:
        for g in await self.redis.xinfo_groups(self.stream):
            if _text(g["name"]) == self.group:
                self.lag = g.get("lag")
                self.pending = int(g["pending"])

    # ---- introspection ------------------------------------------------------------------------------

    def metrics(self) -> Registry:
        """Prometheus series: messages by outcome, entries by how they were fetched, lag, pending."""
        return self._registry

    def stats(self) -> dict[str, Any]:
        """Live numbers for the progress line."""
        counts = self.messages.values
        return {
            "acked": counts.get((("outcome", "acked"),), 0),
            "retried": counts.get((("outcome", "retried"),), 0),
            "dead_lettered": counts.get((("outcome", "dead_lettered"),), 0),
            "lag": self.lag,
            "pending": self.pending,
        }
