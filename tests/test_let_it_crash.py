"""Let it crash, from outside: `otpserve serve` under steady load while its processes are killed, stopped, told
to stop. Counts every request (tests/_load.py); bench/let_it_crash.py measures the same scenarios' times."""

from __future__ import annotations

import os
import signal
import time

import pytest
from _crash import BODY, KINDS, served
from _load import Load
from _procs import alive, descendants, wait_gone

# How long the tree may take to be whole again here (measured: 0.04-0.4 s; see docs/serving.md). The bound
# is loose because CI runs on two shared cores; the benchmark reports the real times.
WHOLE_WITHIN = 10.0
CLIENTS = 8


@pytest.mark.timeout(240)
def test_killing_any_one_process_under_load_fails_only_requests_on_a_killed_acceptors_connections(tmp_path):
    with served(tmp_path) as s, Load(s.port, BODY, CLIENTS) as load:
        load.wait_for(200)
        for kind in KINDS:
            before = load.counts()
            victim = s.kill(kind)
            assert wait_gone([victim], 5) == []
            s.wait_whole(WHOLE_WITHIN)
            assert victim not in s.tree()[kind]  # a new one took its place
            load.wait_for(200)
            lost = load.counts() - before
            lost.pop("ok")
            if kind == "acceptor":
                # Only what was in flight on its own connections (one request per client at most), and as
                # broken connections: no other acceptor answered an error for it.
                assert set(lost) <= {"reset"} and lost["reset"] <= CLIENTS, (kind, lost)
            else:
                assert not lost, (kind, lost, s.output[-5:])


@pytest.mark.timeout(240)
def test_a_stopped_worker_is_a_hang_killed_at_its_batch_deadline_and_no_request_fails(tmp_path):
    with served(tmp_path, 2, 1, "--batch-deadline", "0.5") as s, Load(s.port, BODY, CLIENTS) as load:
        load.wait_for(200)
        before = load.counts()
        victim = s.tree()["partition"][0]
        os.kill(victim, signal.SIGSTOP)  # as a model stuck in native code: alive, and silent
        assert wait_gone([victim], 15) == []  # killed by its acceptor once a batch ran past the deadline
        s.wait_whole(WHOLE_WITHIN)
        load.wait_for(200)
        assert set(load.counts() - before) == {"ok"}, load.failures
        assert any("batch_deadline" in line for line in s.output), s.output[-5:]


@pytest.mark.timeout(240)
def test_sigterm_under_load_answers_everything_accepted_and_exits_0_leaving_no_process(tmp_path):
    with served(tmp_path, 2, 1, "--shutdown", "10") as s, Load(s.port, BODY, CLIENTS) as load:
        load.wait_for(200)
        everything = descendants(s.proc.pid)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.output[-5:]
        took = time.monotonic() - t0
        load.stop()
        # Refused connections (the listeners closed) are not counted: nothing was sent on them.
        assert set(load.counts()) == {"ok"}, load.failures
        assert took < 10 + 5, took
        assert wait_gone(everything, 5) == []
        assert "otpserve: stopped" in "".join(s.output)


@pytest.mark.timeout(240)
def test_sigkill_of_the_top_process_leaves_no_process_within_a_second(tmp_path):
    with served(tmp_path) as s, Load(s.port, BODY, CLIENTS) as load:
        load.wait_for(200)
        everything = descendants(s.proc.pid)
        assert len(everything) == 1 + 2 * 3  # the top's zygote; 2 acceptors, each with its zygote and worker
        s.proc.kill()
        s.proc.wait(5)
        assert wait_gone(everything, 1.0) == [], [p for p in everything if alive(p)]
