"""bridge.backoff: the one reconnect schedule both adapters use."""

import random

from bridge.backoff import Backoff


def test_doubles_to_the_cap_and_resets():
    backoff = Backoff(initial=1, cap=10, low=1, high=1)
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.next() == 1


def test_jitter_stays_in_its_range_and_varies():
    backoff = Backoff(initial=4, cap=4, low=0.5, high=1.0, rng=random.Random(7))
    delays = [backoff.delay(n) for n in range(200)]
    assert all(2 <= d <= 4 for d in delays)
    assert len(set(delays)) > 100  # restarted processes do not retry in step


def test_a_huge_attempt_count_does_not_overflow():
    assert Backoff(initial=2, cap=30, low=1, high=1).delay(10**6) == 30
