"""OS-process children: every way of dying is seen at once and handled by restart type; no orphans."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_otp_targets as targets
from _procs import alive as pid_alive
from _procs import descendants, wait_gone
from otpserve import telemetry
from otpserve.otp import ChildSpec, ExitReason, Supervisor, start_process

TESTS_DIR = Path(__file__).resolve().parent


def arun(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True)
def _quiet_crash_logs(caplog):
    caplog.set_level(logging.CRITICAL, logger="otpserve.otp")


class ExitLog:
    """Collects ('exited' | 'started' | 'restarted', child_id, pid, reason, monotonic time) from telemetry."""

    def __init__(self, handler_id):
        self.handler_id = handler_id
        self.events = []

    def __enter__(self):
        telemetry.attach_many(
            self.handler_id,
            [("otpserve", "supervisor", "child", k) for k in ("started", "exited", "restarted")],
            lambda e, m, md, c: self.events.append(
                (e[-1], md["child_id"], md["pid"], md.get("reason"), time.monotonic())
            ),
        )
        return self

    def __exit__(self, *exc):
        telemetry.detach(self.handler_id)

    def of(self, what):
        return [e for e in self.events if e[0] == what]

    async def until(self, what, count, within=5.0):
        deadline = time.monotonic() + within
        while len(self.of(what)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self.of(what)


def test_worker_killed_by_sigkill_is_restarted_within_100ms():
    async def main():
        with ExitLog("test-sigkill") as log:
            sup = await Supervisor.start_link([ChildSpec.process("w", targets.sleep_forever)])
            (info,) = sup.which_children()
            killed_at = time.monotonic()
            os.kill(info.pid, signal.SIGKILL)
            (exited,) = await log.until("exited", 1)
            (restarted,) = await log.until("restarted", 1)
            _, _, pid, reason, seen_at = exited
            assert pid == info.pid and reason == ExitReason.signal(signal.SIGKILL)
            assert seen_at - killed_at < 0.1
            assert restarted[4] - killed_at < 1.0
            new_pid = sup.which_children()[0].pid
            assert new_pid != info.pid and pid_alive(new_pid)
            await sup.stop()
            assert wait_gone([info.pid, new_pid], within=1.0) == []

    arun(main())


@pytest.mark.parametrize(
    ("target", "args", "expected"),
    [
        (targets.raise_error, (), ExitReason.exit_code(1)),
        (targets.exit_with, (3,), ExitReason.exit_code(3)),
        (targets.segfault, (), ExitReason.signal(signal.SIGSEGV)),
        (targets.exit_with, (0,), ExitReason.normal()),
    ],
    ids=["exception", "os_exit", "segfault", "exit_0"],
)
def test_process_death_is_seen_with_its_reason_and_handled_by_restart_type(target, args, expected):
    async def main():
        with ExitLog("test-death") as log:
            sup = await Supervisor.start_link(
                [ChildSpec.process("w", target, *args, restart="transient")], max_restarts=1
            )
            first_pid = sup.which_children()[0].pid
            exited = await log.until("exited", 1)
            assert exited[0][2] == first_pid and exited[0][3] == expected
            if expected.abnormal:  # transient: restarted only after an abnormal exit
                restarted = await log.until("restarted", 1)
                assert restarted[0][2] != first_pid
            else:
                await asyncio.sleep(0.2)
                assert log.of("restarted") == []
                assert sup.which_children()[0].status == "terminated"
            await sup.stop()

    arun(main())


def test_process_crash_loop_reaches_escalation():
    async def main():
        with ExitLog("test-proc-loop") as log:
            sup = await Supervisor.start_link(
                [
                    ChildSpec.process("crasher", targets.raise_error),
                    ChildSpec.process("ok", targets.sleep_forever),
                ],
                max_restarts=3,
                max_seconds=5,
            )
            healthy = sup.which_children()[1].pid
            reason = await asyncio.wait_for(sup.wait(), 10)
        assert reason.kind == "escalated" and reason.detail == ("crasher", ExitReason.exit_code(1))
        assert len([e for e in log.of("exited") if e[1] == "crasher"]) == 4
        assert wait_gone([healthy], within=1.0) == []

    arun(main())


def test_process_that_ignores_sigterm_is_killed_after_its_shutdown_timeout(tmp_path):
    async def main():
        ready = tmp_path / "ready"
        with ExitLog("test-ignore-term") as log:
            sup = await Supervisor.start_link(
                [ChildSpec.process("stubborn", targets.ignore_sigterm, str(ready), shutdown=0.3)]
            )
            pid = sup.which_children()[0].pid
            for _ in range(500):
                if ready.exists():
                    break
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await sup.stop()
            elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 2.0
        assert log.of("exited")[0][3] == ExitReason.killed()
        assert not pid_alive(pid)

    arun(main())


def test_process_shutdown_goes_in_reverse_start_order_and_sigterm_reads_as_shutdown():
    async def main():
        with ExitLog("test-proc-order") as log:
            sup = await Supervisor.start_link([ChildSpec.process(x, targets.sleep_forever) for x in "abc"])
            pids = [i.pid for i in sup.which_children()]
            await sup.stop()
        assert [(e[1], e[3]) for e in log.of("exited")] == [(x, ExitReason.shutdown()) for x in "cba"]
        assert wait_gone(pids, within=1.0) == []

    arun(main())


def test_start_process_with_spawn_method_is_watched_the_same_way():
    async def main():
        child = start_process(targets.exit_after, (0.05, 7), name="spawned", method="spawn")
        assert (await asyncio.wait_for(child.wait(), 10)) == ExitReason.exit_code(7)
        assert not pid_alive(child.pid)

    arun(main())


def test_start_process_refuses_fork():
    async def main():
        with pytest.raises(ValueError, match="never 'fork'"):
            start_process(targets.sleep_forever, method="fork")

    arun(main())


def test_stopping_a_nested_tree_leaves_no_process_behind():
    async def main():
        inner = Supervisor.child_spec([ChildSpec.process(f"i{n}", targets.sleep_forever) for n in range(2)], id="inner")
        sup = await Supervisor.start_link([ChildSpec.process("w", targets.sleep_forever), inner])
        inner_sup = sup.which_children()[1].child
        pids = [sup.which_children()[0].pid] + [i.pid for i in inner_sup.which_children()]
        assert all(pid_alive(p) for p in pids)
        await sup.stop()
        assert wait_gone(pids, within=1.0) == []

    arun(main())


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {tests_dir!r})
    import test_otp_targets as targets
    from otpserve.otp import ChildSpec, Supervisor

    async def main():
        inner = Supervisor.child_spec(
            [ChildSpec.process("i", targets.sleep_forever, method={method!r})], id="inner"
        )
        sup = await Supervisor.start_link(
            [ChildSpec.process("w", targets.sleep_forever, method={method!r}), inner]
        )
        pids = [sup.which_children()[0].pid, sup.which_children()[1].child.which_children()[0].pid]
        print(json.dumps(pids), flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("method", ["zygote", "spawn"])
def test_children_do_not_outlive_a_supervisor_process_killed_by_sigkill(method):
    script = ORPHAN_SCRIPT.format(tests_dir=str(TESTS_DIR), method=method)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker_pids = json.loads(proc.stdout.readline())
        assert all(pid_alive(p) for p in worker_pids)
        everything = descendants(proc.pid)
        assert set(worker_pids) <= set(everything)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        assert wait_gone(everything, within=3.0) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nested_supervisor_with_finite_shutdown_has_its_stubborn_children_killed_when_time_runs_out(tmp_path):
    async def main():
        ready = tmp_path / "ready"
        inner = Supervisor.child_spec(
            [ChildSpec.process("stubborn", targets.ignore_sigterm, str(ready), shutdown="infinity")],
            id="inner",
            shutdown=0.3,
        )
        sup = await Supervisor.start_link([inner])
        pid = sup.which_children()[0].child.which_children()[0].pid
        for _ in range(500):
            if ready.exists():
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await sup.stop()
        assert 0.25 <= time.monotonic() - started < 2.0
        assert wait_gone([pid], within=1.0) == []

    arun(main())
