import asyncio
import logging

import pytest
from otpserve.otp import (
    AlreadyRegistered,
    CallTimeout,
    GenServer,
    NoProc,
    NoReply,
    ServerExited,
    Stop,
    Supervisor,
    whereis,
)


def arun(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Counter(GenServer):
    """The reference example: start at 0, cast +5, cast +3, call get -> 8."""

    async def init(self, start):
        self.count = start

    async def handle_cast(self, amount):
        self.count += amount

    async def handle_call(self, message, caller):
        if message == "get":
            return self.count
        if message == "crash":
            raise RuntimeError("counter asked to crash")
        if message == "stop":
            return Stop("normal", reply="bye")
        raise ValueError(message)


def test_counter_reference_example_casts_then_call_returns_8():
    async def main():
        counter = await Counter.start_link(0, name="counter")
        counter.cast(5)
        counter.cast(3)
        assert await counter.call("get") == 8
        assert await GenServer.call("counter", "get") == 8
        await counter.stop()

    arun(main())


class Slow(GenServer):
    async def init(self, _):
        self.handled = []

    async def handle_call(self, message, caller):
        delay, value = message
        await asyncio.sleep(delay)
        self.handled.append(value)
        return value


def test_call_timeout_raises_call_timeout_naming_server_and_drops_the_late_reply():
    async def main():
        server = await Slow.start_link(name="slow")
        with pytest.raises(CallTimeout) as info:
            await server.call((0.3, "late"), timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert "slow" in str(info.value) and "0.05" in str(info.value)
        # The next caller gets its own reply, not the late one; the server kept running.
        assert await server.call((0, "fresh"), timeout=2.0) == "fresh"
        assert server.handled == ["late", "fresh"]
        await server.stop()

    arun(main())


def test_crash_in_handle_call_reaches_caller_and_server_exits_with_that_reason(caplog):
    async def main():
        counter = await Counter.start_link(0)
        with caplog.at_level(logging.ERROR), pytest.raises(ServerExited) as info:
            await counter.call("crash")
        assert isinstance(info.value.__cause__, RuntimeError)
        reason = await counter.wait()
        assert reason.kind == "exception" and isinstance(reason.detail, RuntimeError)
        assert not counter.is_alive()
        with pytest.raises(NoProc):
            await counter.call("get")

    arun(main())
    assert "counter asked to crash" in caplog.text


def test_crashed_server_under_supervisor_is_restarted_under_the_same_name():
    async def main():
        sup = await Supervisor.start_link([Counter.child_spec(10, name="sup-counter")])
        first = whereis("sup-counter")
        first.cast(1)
        assert await first.call("get") == 11
        with pytest.raises(ServerExited):
            await first.call("crash")
        for _ in range(200):
            second = whereis("sup-counter")
            if second is not None and second is not first:
                break
            await asyncio.sleep(0.01)
        assert second is not first and await GenServer.call("sup-counter", "get") == 10
        await sup.stop()
        assert whereis("sup-counter") is None

    arun(main())


def test_name_is_unique_while_held_and_released_on_exit():
    async def main():
        a = await Counter.start_link(0, name="unique")
        with pytest.raises(AlreadyRegistered):
            await Counter.start_link(0, name="unique")
        assert whereis("unique") is a
        await a.stop()
        assert whereis("unique") is None
        with pytest.raises(NoProc):
            await GenServer.call("unique", "get")
        b = await Counter.start_link(1, name="unique")
        assert await GenServer.call("unique", "get") == 1
        await b.stop()

    arun(main())


def test_stop_returned_from_handler_replies_then_exits_normally():
    async def main():
        counter = await Counter.start_link(0)
        assert await counter.call("stop") == "bye"
        assert (await counter.wait()).kind == "normal"

    arun(main())


class Recorder(GenServer):
    async def init(self, log):
        self.log = log

    async def handle_info(self, message):
        self.log.append(("info", message))

    async def handle_call(self, message, caller):
        if message == "defer":
            self.pending = caller
            return NoReply
        if message == "release":
            self.pending.reply("released")
            return "ok"
        if message == "block":
            await asyncio.sleep(10)
        return message

    async def terminate(self, reason):
        self.log.append(("terminate", reason.kind))


def test_send_reaches_handle_info_and_stop_runs_terminate():
    async def main():
        log = []
        server = await Recorder.start_link(log)
        server.send("hello")
        assert await server.call("sync") == "sync"
        reason = await server.stop("shutdown")
        assert reason.kind == "shutdown"
        assert log == [("info", "hello"), ("terminate", "shutdown")]

    arun(main())


def test_noreply_defers_the_reply_until_caller_reply():
    async def main():
        server = await Recorder.start_link([])
        deferred = asyncio.create_task(server.call("defer"))
        await asyncio.sleep(0.05)
        assert not deferred.done()
        assert await server.call("release") == "ok"
        assert await deferred == "released"
        await server.stop()

    arun(main())


def test_kill_skips_terminate_and_fails_pending_callers():
    async def main():
        log = []
        server = await Recorder.start_link(log)
        blocked = asyncio.create_task(server.call("block", timeout=5))
        queued = asyncio.create_task(server.call("queued", timeout=5))
        await asyncio.sleep(0.05)
        server.kill()
        assert (await server.wait()).kind == "killed"
        assert log == []
        for task in (blocked, queued):
            with pytest.raises(ServerExited):
                await task

    arun(main())


def test_stop_of_a_server_stuck_in_a_handler_kills_it_after_the_timeout():
    async def main():
        server = await Recorder.start_link([])
        blocked = asyncio.create_task(server.call("block", timeout=5))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await server.stop(timeout=0.2)).kind == "killed"
        assert 0.15 < loop.time() - started < 2.0
        with pytest.raises(ServerExited):
            await blocked

    arun(main())


def test_error_in_init_raises_from_start_link_and_frees_the_name():
    class Broken(GenServer):
        async def init(self, _):
            raise ValueError("bad config")

    async def main():
        with pytest.raises(ValueError, match="bad config"):
            await Broken.start_link(name="broken")
        assert whereis("broken") is None

    arun(main())


def test_supervisor_shutdown_reaches_terminate_with_reason_shutdown():
    async def main():
        log = []
        sup = await Supervisor.start_link([Recorder.child_spec(log, name="rec")])
        assert await GenServer.call("rec", "ping") == "ping"
        await sup.stop()
        assert log == [("terminate", "shutdown")]

    arun(main())
