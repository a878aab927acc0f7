"""Zero lost, zero duplicated: 10,000 matmul messages through `otpserve pipeline matmul`, SIGKILLed three
times at random moments and restarted, with redis-server SIGKILLed and restarted once mid-run."""

import flow_guarantee
import pytest


@pytest.mark.timeout(300)
def test_every_input_is_answered_exactly_once_through_three_sigkills_and_a_redis_restart(redis_server):
    outcome = flow_guarantee.run(redis_server, 10_000, kills=3, seed=1)
    assert outcome.kills == 3 and outcome.redis_restarts == 1
    assert flow_guarantee.check(outcome) == []
    bad = sum(1 for want in outcome.expected.values() if want is None)
    assert len(outcome.dead) == bad > 0
    assert len(outcome.results) == 10_000 - bad
