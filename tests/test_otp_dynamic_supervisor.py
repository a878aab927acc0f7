import asyncio
import logging
import os
import signal
import time

import pytest
import test_otp_targets as targets
from otpserve.otp import ChildNotFound, ChildSpec, DynamicSupervisor, MaxChildrenReached, Supervisor


def arun(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True)
def _quiet_crash_logs(caplog):
    caplog.set_level(logging.CRITICAL, logger="otpserve.otp")


async def until(predicate, within=5.0):
    deadline = time.monotonic() + within
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return predicate()


def test_start_child_and_terminate_child_by_handle_or_pid():
    async def main():
        sup = await DynamicSupervisor.start_link(name="dyn")
        a = await sup.start_child(ChildSpec.process("a", targets.sleep_forever))
        b = await sup.start_child(ChildSpec.task("b", asyncio.sleep, 60))
        assert sup.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
        assert (await sup.terminate_child(a.pid)).kind == "shutdown"
        assert (await sup.terminate_child(b)).kind == "shutdown"
        assert sup.which_children() == []
        with pytest.raises(ChildNotFound):
            await sup.terminate_child(b)
        await sup.stop()

    arun(main())


def test_max_children_is_enforced():
    async def main():
        sup = await DynamicSupervisor.start_link(max_children=2)
        first = await sup.start_child(ChildSpec.task("t", asyncio.sleep, 60))
        await sup.start_child(ChildSpec.task("t", asyncio.sleep, 60))
        with pytest.raises(MaxChildrenReached, match="max_children=2"):
            await sup.start_child(ChildSpec.task("t", asyncio.sleep, 60))
        await sup.terminate_child(first)
        await sup.start_child(ChildSpec.task("t", asyncio.sleep, 60))
        await sup.stop()

    arun(main())


def test_permanent_child_is_restarted_and_temporary_child_is_forgotten():
    async def main():
        sup = await DynamicSupervisor.start_link()
        perm = await sup.start_child(ChildSpec.process("perm", targets.sleep_forever))
        temp = await sup.start_child(ChildSpec.process("temp", targets.sleep_forever, restart="temporary"))
        os.kill(perm.pid, signal.SIGKILL)
        os.kill(temp.pid, signal.SIGKILL)

        def settled():
            rows = sup.which_children()
            return len(rows) == 1 and rows[0].id == "perm" and rows[0].pid not in (None, perm.pid)

        assert await until(settled)
        assert sup.count_children()["active"] == 1
        await sup.stop()

    arun(main())


def test_dynamic_supervisor_crash_loop_escalates_to_its_parent():
    async def main():
        parent = await Supervisor.start_link(
            [DynamicSupervisor.child_spec(id="pool", name="pool", max_restarts=2)], max_restarts=0
        )
        pool = parent.which_children()[0].child
        await pool.start_child(ChildSpec.process("crasher", targets.raise_error))
        reason = await asyncio.wait_for(parent.wait(), 10)
        assert reason.kind == "escalated"
        child_id, child_reason = reason.detail
        assert child_id == "pool" and child_reason.kind == "escalated"

    arun(main())


def test_stop_terminates_every_child_process():
    async def main():
        sup = await DynamicSupervisor.start_link()
        children = [await sup.start_child(ChildSpec.process(n, targets.sleep_forever)) for n in range(3)]
        await sup.stop()
        assert all(not c.is_alive() for c in children)
        for c in children:
            with pytest.raises(ProcessLookupError):
                os.kill(c.pid, 0)  # reaped, not even a zombie

    arun(main())
