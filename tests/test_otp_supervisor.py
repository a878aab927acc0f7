"""Supervisor semantics with asyncio-task children: strategies, restart types, intensity, shutdown, API."""

import asyncio
import itertools
import logging
import time
from collections import Counter as Tally

import pytest
from otpserve import telemetry
from otpserve.otp import (
    Backoff,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildStartError,
    Supervisor,
)


def arun(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True)
def _quiet_crash_logs(caplog):
    caplog.set_level(logging.CRITICAL, logger="otpserve.otp")


class Workers:
    """Task children that count their starts and exit (normally or by crashing) when told."""

    def __init__(self):
        self.starts = Tally()
        self.controls = {}
        self.stopped = []  # ids in the order they were cancelled

    async def run(self, child_id):
        self.starts[child_id] += 1
        control = self.controls[child_id] = asyncio.get_running_loop().create_future()
        try:
            command = await control
        except asyncio.CancelledError:
            self.stopped.append(child_id)
            raise
        if command == "crash":
            raise RuntimeError(f"{child_id} crashed on purpose")

    def spec(self, child_id, restart="permanent", **opts):
        return ChildSpec.task(child_id, self.run, child_id, restart=restart, **opts)

    async def exit(self, child_id, how):
        self.controls[child_id].set_result(how)

    async def settle(self, expected, extra=0.1):
        """Wait (bounded) until starts reach ``expected``, then a little longer to catch extra restarts."""
        deadline = time.monotonic() + 5
        while any(self.starts[k] < v for k, v in expected.items()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(extra)


RESTARTED = {
    ("permanent", "normal"): True,
    ("permanent", "crash"): True,
    ("transient", "normal"): False,
    ("transient", "crash"): True,
    ("temporary", "normal"): False,
    ("temporary", "crash"): False,
}
SIBLINGS_RESTARTED = {"one_for_one": set(), "one_for_all": {"a", "c"}, "rest_for_one": {"c"}}


@pytest.mark.parametrize(
    ("strategy", "restart", "how"),
    list(
        itertools.product(
            ["one_for_one", "one_for_all", "rest_for_one"],
            ["permanent", "transient", "temporary"],
            ["normal", "crash"],
        )
    ),
)
def test_strategy_and_restart_type_decide_who_is_restarted(strategy, restart, how):
    async def main():
        w = Workers()
        sup = await Supervisor.start_link([w.spec("a"), w.spec("b", restart), w.spec("c")], strategy=strategy)
        await w.settle({"a": 1, "b": 1, "c": 1}, extra=0)
        await w.exit("b", how)
        restarted = RESTARTED[(restart, how)]
        siblings = SIBLINGS_RESTARTED[strategy] if restarted else set()
        expected = {"a": 1 + ("a" in siblings), "b": 1 + restarted, "c": 1 + ("c" in siblings)}
        await w.settle(expected)
        assert dict(w.starts) == expected
        status = {info.id: info.status for info in sup.which_children()}
        if restarted:
            assert status == {"a": "running", "b": "running", "c": "running"}
        elif restart == "temporary":
            assert status == {"a": "running", "c": "running"}  # a temporary child's spec is dropped
        else:
            assert status == {"a": "running", "b": "terminated", "c": "running"}
        assert (await sup.stop()).kind == "shutdown"

    arun(main())


def test_temporary_sibling_stopped_by_one_for_all_is_not_restarted():
    async def main():
        w = Workers()
        sup = await Supervisor.start_link([w.spec("a"), w.spec("t", "temporary")], strategy="one_for_all")
        await w.settle({"a": 1, "t": 1}, extra=0)
        await w.exit("a", "crash")
        await w.settle({"a": 2})
        assert dict(w.starts) == {"a": 2, "t": 1}
        assert [i.id for i in sup.which_children()] == ["a"]
        await sup.stop()

    arun(main())


def test_crash_loop_past_max_restarts_stops_children_and_exits_escalated():
    async def main():
        escalations = []
        telemetry.attach("test-esc", ("otpserve", "supervisor", "escalated"), lambda *a: escalations.append(a))
        try:
            w = Workers()

            async def crash_at_once():
                raise RuntimeError("crash loop")

            sup = await Supervisor.start_link(
                [w.spec("steady"), ChildSpec.task("looper", crash_at_once)],
                max_restarts=3,
                max_seconds=5,
                name="looping",
            )
            reason = await asyncio.wait_for(sup.wait(), 5)
        finally:
            telemetry.detach("test-esc")
        assert reason.kind == "escalated"
        child_id, child_reason = reason.detail
        assert child_id == "looper" and child_reason.kind == "exception"
        assert w.stopped == ["steady"]  # the healthy sibling was shut down too
        assert not sup.is_alive() and sup.count_children()["active"] == 0
        ((_, measurements, metadata, _),) = escalations
        assert metadata["supervisor"] == "looping" and metadata["child_id"] == "looper"
        assert measurements["restarts"] == 4

    arun(main())


def test_restarts_spread_beyond_max_seconds_do_not_escalate():
    async def main():
        w = Workers()
        sup = await Supervisor.start_link([w.spec("a")], max_restarts=1, max_seconds=0.2)
        for n in range(2, 5):
            await w.settle({"a": n - 1}, extra=0.25)
            await w.exit("a", "crash")
        await w.settle({"a": 4}, extra=0)
        assert sup.is_alive() and w.starts["a"] == 4
        await sup.stop()

    arun(main())


def test_escalation_propagates_up_the_supervision_tree():
    async def main():
        events = []
        telemetry.attach_many(
            "test-tree",
            [("otpserve", "supervisor", "child", "restarted"), ("otpserve", "supervisor", "escalated")],
            lambda e, m, md, c: events.append((e[-1], md["supervisor"], md["child_id"])),
        )

        async def crash_at_once():
            raise RuntimeError("crash loop")

        inner = Supervisor.child_spec(
            [ChildSpec.task("looper", crash_at_once)], id="inner", name="inner", max_restarts=2, max_seconds=5
        )
        try:
            top = await Supervisor.start_link([inner], name="top", max_restarts=1, max_seconds=5)
            reason = await asyncio.wait_for(top.wait(), 5)
        finally:
            telemetry.detach("test-tree")
        assert reason.kind == "escalated"
        child_id, child_reason = reason.detail
        assert child_id == "inner" and child_reason.kind == "escalated"
        # The inner supervisor escalated, top restarted it once, it escalated again, then top gave up.
        assert events.count(("escalated", "inner", "looper")) == 2
        assert ("restarted", "top", "inner") in events
        assert events[-1] == ("escalated", "top", "inner")

    arun(main())


def test_shutdown_stops_children_in_reverse_start_order():
    async def main():
        w = Workers()
        sup = await Supervisor.start_link([w.spec(x) for x in "abcd"])
        await w.settle({x: 1 for x in "abcd"}, extra=0)
        assert (await sup.stop()).kind == "shutdown"
        assert w.stopped == ["d", "c", "b", "a"]

    arun(main())


def test_child_that_ignores_shutdown_is_killed_after_its_timeout():
    async def main():
        cleanup_started = asyncio.Event()

        async def stubborn():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cleanup_started.set()
                await asyncio.sleep(60)  # "cleanup" far longer than its shutdown allows

        exits = []
        telemetry.attach(
            "test-stubborn",
            ("otpserve", "supervisor", "child", "exited"),
            lambda e, m, md, c: exits.append(md),
        )
        try:
            sup = await Supervisor.start_link([ChildSpec.task("stubborn", stubborn, shutdown=0.2)])
            started = time.monotonic()
            await sup.stop()
            elapsed = time.monotonic() - started
        finally:
            telemetry.detach("test-stubborn")
        assert cleanup_started.is_set()
        assert 0.15 <= elapsed < 2.0
        assert exits[0]["reason"].kind == "killed"

    arun(main())


def test_brutal_kill_child_gets_no_grace_period():
    async def main():
        cleaned = []

        async def polite():
            try:
                await asyncio.sleep(60)
            finally:
                cleaned.append(True)

        sup = await Supervisor.start_link([ChildSpec.task("p", polite, shutdown="brutal_kill")])
        await asyncio.sleep(0)
        started = time.monotonic()
        await sup.stop()
        assert time.monotonic() - started < 0.5
        assert cleaned == [True]  # a task's kill is a cancel; its finally still runs

    arun(main())


def test_which_children_and_count_children():
    async def main():
        w = Workers()
        inner = Supervisor.child_spec([w.spec("x")], id="inner")
        sup = await Supervisor.start_link([w.spec("a"), inner, w.spec("b", "transient")])
        assert [(i.id, i.type, i.restart, i.status) for i in sup.which_children()] == [
            ("a", "worker", "permanent", "running"),
            ("inner", "supervisor", "permanent", "running"),
            ("b", "worker", "transient", "running"),
        ]
        assert sup.count_children() == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
        await w.settle({"a": 1, "b": 1, "x": 1}, extra=0)
        await w.exit("b", "normal")
        await asyncio.sleep(0.05)
        assert sup.count_children() == {"specs": 3, "active": 2, "supervisors": 1, "workers": 2}
        await sup.stop()

    arun(main())


def test_terminate_restart_and_delete_child():
    async def main():
        w = Workers()
        sup = await Supervisor.start_link([w.spec("a"), w.spec("b")])
        await w.settle({"a": 1, "b": 1}, extra=0)
        await sup.terminate_child("a")
        assert w.stopped == ["a"]
        assert {i.id: i.status for i in sup.which_children()} == {"a": "terminated", "b": "running"}
        await asyncio.sleep(0.05)
        assert w.starts["a"] == 1  # a deliberate terminate is not a crash: no restart
        with pytest.raises(ChildRunning):
            await sup.delete_child("b")
        with pytest.raises(ChildRunning):
            await sup.restart_child("b")
        await sup.restart_child("a")
        await w.settle({"a": 2}, extra=0)
        assert sup.count_children()["active"] == 2
        await sup.terminate_child("a")
        await sup.delete_child("a")
        assert [i.id for i in sup.which_children()] == ["b"]
        with pytest.raises(ChildNotFound):
            await sup.restart_child("a")
        await sup.start_child(w.spec("c"))
        assert [i.id for i in sup.which_children()] == ["b", "c"]
        await sup.stop()
        assert w.stopped[-2:] == ["c", "b"]

    arun(main())


def test_child_failing_to_start_stops_the_ones_already_started():
    async def main():
        w = Workers()

        async def refuse():
            await w.settle({"a": 1, "b": 1}, extra=0)  # let the started tasks run before the failure
            raise OSError("port in use")

        with pytest.raises(ChildStartError) as info:
            await Supervisor.start_link([w.spec("a"), w.spec("b"), ChildSpec("bad", refuse)])
        assert isinstance(info.value.__cause__, OSError)
        await asyncio.sleep(0)
        assert w.stopped == ["b", "a"]

    arun(main())


def test_backoff_spaces_out_restarts_of_a_crash_loop():
    async def main():
        starts = []

        async def crash_at_once():
            starts.append(time.monotonic())
            raise RuntimeError("crash loop")

        sup = await Supervisor.start_link(
            [ChildSpec.task("looper", crash_at_once)],
            max_restarts=10,
            max_seconds=60,
            backoff=Backoff(initial=0.05, max=1.0, factor=2.0),
        )
        deadline = time.monotonic() + 5
        while len(starts) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await sup.stop()
        gaps = [b - a for a, b in itertools.pairwise(starts[:5])]
        assert len(gaps) == 4
        assert gaps[0] >= 0.045
        assert all(later > earlier * 1.4 for earlier, later in itertools.pairwise(gaps)), gaps

    arun(main())


def test_stop_during_backoff_does_not_wait_for_the_delay():
    async def main():
        async def crash_at_once():
            raise RuntimeError("crash loop")

        sup = await Supervisor.start_link(
            [ChildSpec.task("looper", crash_at_once)], backoff=Backoff(initial=5.0, max=5.0)
        )
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert (await sup.stop()).kind == "shutdown"
        assert time.monotonic() - started < 1.0

    arun(main())


def test_telemetry_reports_started_exited_with_reason_and_restarted():
    async def main():
        events = []
        telemetry.attach_many(
            "test-child-events",
            [("otpserve", "supervisor", "child", k) for k in ("started", "exited", "restarted")],
            lambda e, m, md, c: events.append((e[-1], md["child_id"], md.get("reason"))),
        )
        try:
            w = Workers()
            sup = await Supervisor.start_link([w.spec("a")], name="observed")
            await w.settle({"a": 1}, extra=0)
            await w.exit("a", "crash")
            await w.settle({"a": 2}, extra=0.02)
            await sup.stop()
        finally:
            telemetry.detach("test-child-events")
        kinds = [(what, cid, reason.kind if reason else None) for what, cid, reason in events]
        assert kinds == [
            ("started", "a", None),
            ("exited", "a", "exception"),
            ("started", "a", None),
            ("restarted", "a", None),
            ("exited", "a", "shutdown"),
        ]

    arun(main())
