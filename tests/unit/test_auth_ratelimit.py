"""The failed-login limiter: sliding window, reservations, release on success, bounded memory."""

from __future__ import annotations

import pytest

from services.auth.ratelimit import LoginLimiter
from services.core.errors import ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_reached_then_window_slides() -> None:
    clock = Clock()
    limiter = LoginLimiter(3, clock=clock)
    for _ in range(3):
        limiter.reserve(["user:a"])
        clock.now += 10
    with pytest.raises(ResourceExhausted) as caught:
        limiter.reserve(["user:a"])
    # The oldest failure (t=1000) leaves the window at t=1060; now is 1030.
    assert caught.value.details == {"retry_after_s": 30}
    assert "retry in 30 s" in caught.value.message
    clock.now = 1060.0
    limiter.reserve(["user:a"])  # one slot freed


def test_a_refused_attempt_does_not_extend_the_lockout() -> None:
    clock = Clock()
    limiter = LoginLimiter(1, clock=clock)
    limiter.reserve(["k"])
    for _ in range(5):
        clock.now += 10
        with pytest.raises(ResourceExhausted):
            limiter.reserve(["k"])
    clock.now = 1060.0
    limiter.reserve(["k"])


def test_success_releases_its_reservation() -> None:
    clock = Clock()
    limiter = LoginLimiter(2, clock=clock)
    for _ in range(10):
        stamp = limiter.reserve(["user:a", "client:x"])
        clock.now += 0.001
        limiter.release(["user:a", "client:x"], stamp)
    limiter.reserve(["user:a"])
    limiter.reserve(["user:a"])
    with pytest.raises(ResourceExhausted):
        limiter.reserve(["user:a"])


def test_any_exhausted_key_refuses_and_nothing_is_counted() -> None:
    limiter = LoginLimiter(2, clock=Clock())
    limiter.reserve(["user:a", "client:x"])
    limiter.reserve(["user:b", "client:x"])
    with pytest.raises(ResourceExhausted):
        limiter.reserve(["user:c", "client:x"])  # the client is exhausted
    limiter.reserve(["user:c", "client:y"])
    limiter.reserve(["user:c", "client:z"])  # user:c was not charged for the refused attempt


def test_concurrent_reservations_cannot_exceed_the_limit() -> None:
    """Reserving before the (slow) password check means parallel guesses are counted up front."""
    limiter = LoginLimiter(3, clock=Clock())
    granted = 0
    for _ in range(10):
        try:
            limiter.reserve(["user:a"])
            granted += 1
        except ResourceExhausted:
            pass
    assert granted == 3


def test_memory_is_bounded_least_recently_used_first() -> None:
    limiter = LoginLimiter(1, max_keys=2, clock=Clock())
    limiter.reserve(["a"])
    limiter.reserve(["b"])
    limiter.reserve(["c"])  # evicts a
    limiter.reserve(["a"])  # a forgotten: allowed again; evicts b
    with pytest.raises(ResourceExhausted):
        limiter.reserve(["c"])
    assert len(limiter._attempts) == 2
