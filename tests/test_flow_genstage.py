"""GenStage: demand bounds what is in flight, dispatchers share events, subscriptions end cleanly."""

import asyncio

import pytest
from otpserve.flow.dispatchers import BroadcastDispatcher, PartitionDispatcher
from otpserve.flow.genstage import Consumer, GenStage, Producer, ProducerConsumer
from otpserve.otp import Supervisor


def arun(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Counter(GenStage):
    """Produces 0, 1, 2, ... exactly as demanded, recording every demand it was given."""

    async def init(self, arg):
        self.n = 0
        self.demands = []
        self.extra = arg.get("extra", 0) if arg else 0
        return Producer(
            dispatcher=arg.get("dispatcher") if arg else None, buffer_size=arg.get("buffer", 10_000) if arg else 10_000
        )

    async def handle_demand(self, demand):
        self.demands.append(demand)
        events = list(range(self.n, self.n + demand + self.extra))
        self.n += len(events)
        return events


class Sink(GenStage):
    """Records events; sleeps per batch to be slow; tracks the most it ever held (asked + received)."""

    async def init(self, arg):
        self.events = []
        self.delay = arg.get("delay", 0.0)
        self.subscribe_to = arg.get("subscribe_to", ())
        return Consumer(subscribe_to=self.subscribe_to)

    async def handle_events(self, events, from_):
        sub = self._producers[from_]
        self.max_seen = max(getattr(self, "max_seen", 0), sub.outstanding + sub.held)
        self.events.extend(events)
        if self.delay:
            await asyncio.sleep(self.delay)


class Doubler(GenStage):
    async def init(self, arg):
        return ProducerConsumer(dispatcher=arg.get("dispatcher") if arg else None)

    async def handle_events(self, events, from_):
        return [e * 2 for e in events]


async def until(pred, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_a_slow_consumer_never_holds_more_than_max_demand_and_the_producer_makes_only_what_was_asked():
    async def main():
        producer = await Counter.start_link({})
        sink = await Sink.start_link({"delay": 0.002})
        await sink.subscribe(producer, max_demand=8, min_demand=4)
        await until(lambda: len(sink.events) >= 200)
        assert sink.max_seen <= 8
        # Every demand is what the consumer re-asked for: the first 8, then top-ups of 4 or more, never beyond.
        assert producer.demands[0] == 8
        assert sum(producer.demands) - len(sink.events) <= 8
        assert sink.events[:200] == list(range(200))
        await sink.stop()
        await producer.stop()

    arun(main())


def test_a_producer_never_emits_beyond_demand_plus_its_buffer():
    async def main():
        # This producer makes 150 more than asked every time: the extra waits in a 100-event buffer, the
        # overflow is dropped (and counted), and no consumer ever gets more than it asked for.
        producer = await Counter.start_link({"extra": 150, "buffer": 100})
        sink = await Sink.start_link({"delay": 0.001})
        await sink.subscribe(producer, max_demand=10, min_demand=5)
        await until(lambda: len(sink.events) >= 300)
        assert sink.max_seen <= 10
        assert producer.buffered <= 100
        assert producer.dropped > 0
        received_plus_buffered = len(sink.events) + producer.buffered
        assert received_plus_buffered + producer.dropped == producer.n
        await sink.stop()
        await producer.stop()

    arun(main())


def test_producer_consumer_passes_back_pressure_upstream():
    async def main():
        producer = await Counter.start_link({})
        doubler = await Doubler.start_link()
        sink = await Sink.start_link({"delay": 0.003})
        await doubler.subscribe(producer, max_demand=6, min_demand=3)
        await sink.subscribe(doubler, max_demand=4, min_demand=2)
        await until(lambda: len(sink.events) >= 60)
        assert sink.events[:60] == [2 * i for i in range(60)]
        # At most what the doubler may hold (6) plus what the sink may hold (4) has been made and not consumed.
        assert producer.n - len(sink.events) <= 6 + 4
        for stage in (sink, doubler, producer):
            await stage.stop()

    arun(main())


def test_broadcast_dispatcher_sends_every_event_to_every_consumer_at_the_slowest_pace():
    async def main():
        producer = await Counter.start_link({"dispatcher": BroadcastDispatcher()})
        fast = await Sink.start_link({})
        slow = await Sink.start_link({"delay": 0.005})
        await fast.subscribe(producer, max_demand=5)
        await slow.subscribe(producer, max_demand=5)
        await until(lambda: len(slow.events) >= 30)
        first = slow.events[0]  # events broadcast before it subscribed went to the fast one alone
        assert slow.events[:30] == list(range(first, first + 30))
        assert set(slow.events[:30]) <= set(fast.events)
        assert fast.events[-1] - slow.events[-1] <= 5 + 5
        for stage in (fast, slow, producer):
            await stage.stop()

    arun(main())


def test_partition_dispatcher_routes_each_event_to_its_partition():
    async def main():
        producer = await Counter.start_link(
            {"dispatcher": PartitionDispatcher(["even", "odd"], lambda e: "odd" if e % 2 else "even")}
        )
        even = await Sink.start_link({})
        odd = await Sink.start_link({})
        await even.subscribe(producer, max_demand=10, partition="even")
        await odd.subscribe(producer, max_demand=10, partition="odd")
        await until(lambda: len(even.events) >= 50 and len(odd.events) >= 50)
        assert all(e % 2 == 0 for e in even.events) and all(e % 2 == 1 for e in odd.events)
        assert even.events[:50] == list(range(0, 100, 2))
        for stage in (even, odd, producer):
            await stage.stop()

    arun(main())


def test_subscribing_to_an_unknown_partition_cancels_the_subscription_and_a_permanent_consumer_exits():
    async def main():
        producer = await Counter.start_link({"dispatcher": PartitionDispatcher(2, lambda e: e % 2)})
        sink = await Sink.start_link({})
        await sink.subscribe(producer, max_demand=10, partition=7)
        reason = await asyncio.wait_for(sink.wait(), 2)
        assert reason.abnormal and "partition 7" in str(reason)
        await producer.stop()

    arun(main())


def test_a_consumer_exits_with_its_permanent_producer_and_survives_a_temporary_one():
    async def main():
        p1 = await Counter.start_link({})
        p2 = await Counter.start_link({})
        permanent = await Sink.start_link({})
        temporary = await Sink.start_link({})
        await permanent.subscribe(p1, max_demand=5)
        await temporary.subscribe(p2, max_demand=5, cancel="temporary")
        p1.kill()
        p2.kill()
        reason = await asyncio.wait_for(permanent.wait(), 2)
        assert reason.kind == "killed"
        await asyncio.sleep(0.05)
        assert temporary.is_alive() and temporary.producer_refs == []
        await temporary.stop()

    arun(main())


def test_a_dead_consumer_frees_its_demand_for_the_others():
    async def main():
        producer = await Counter.start_link({})
        a = await Sink.start_link({"delay": 0.002})
        b = await Sink.start_link({"delay": 0.002})
        await a.subscribe(producer, max_demand=4)
        await b.subscribe(producer, max_demand=4)
        await until(lambda: len(a.events) > 10 and len(b.events) > 10)
        a.kill()
        await asyncio.sleep(0.02)
        assert producer.consumer_refs == b.producer_refs
        seen = len(b.events)
        await until(lambda: len(b.events) > seen + 40)
        await b.stop()
        await producer.stop()

    arun(main())


def test_stages_are_supervised_children_restarted_after_a_crash():
    class Crashy(GenStage):
        async def init(self, arg):
            return Consumer()

        async def handle_events(self, events, from_):
            raise RuntimeError("boom")

    async def main():
        sup = await Supervisor.start_link([Counter.child_spec({}, id="counter", name="flow-test-counter")])
        producer = sup.which_children()[0].child
        crashy = await Crashy.start_link()
        await crashy.subscribe(producer, max_demand=3)
        reason = await asyncio.wait_for(crashy.wait(), 2)
        assert reason.kind == "exception"
        assert sup.which_children()[0].child is producer  # a consumer's crash is not the producer's
        producer.kill()
        await until(lambda: sup.which_children()[0].child not in (None, producer))
        await sup.stop()

    arun(main())


def test_init_must_say_what_kind_of_stage_it_is():
    class Confused(GenStage):
        async def init(self, arg):
            return "producer"

    with pytest.raises(TypeError, match="must return Producer"):
        arun(Confused.start_link())


def test_bad_demand_options_are_refused_with_the_value():
    async def main():
        producer = await Counter.start_link({})
        sink = await Sink.start_link({})
        with pytest.raises(ValueError, match="min_demand must be an integer in \\[0, max_demand=5\\), got 5"):
            await sink.subscribe(producer, max_demand=5, min_demand=5)
        with pytest.raises(ValueError, match="max_demand must be an integer >= 1, got 0"):
            await sink.subscribe(producer, max_demand=0)
        await sink.stop()
        await producer.stop()

    arun(main())
