"""The failed-login limiter: per (user, address), per address and a per-user ceiling; sliding window,
reservations, release on success, bounded memory."""

from __future__ import annotations

import pytest

from services.auth.ratelimit import CLIENT_FACTOR, USER_FACTOR, LoginLimiter
from services.core.errors import ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: LoginLimiter, username: str, client: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        limiter.reserve(username, client)
    return caught.value


def test_limit_reached_then_window_slides() -> None:
    clock = Clock()
    limiter = LoginLimiter(3, clock=clock)
    for _ in range(3):
        limiter.reserve("a", "x")
        clock.now += 10
    error = refused(limiter, "a", "x")
    # The oldest failure (t=1000) leaves the window at t=1060; now is 1030.
    assert error.details == {"retry_after_s": 30}
    assert "retry in 30 s" in error.message
    clock.now = 1060.0
    limiter.reserve("a", "x")  # one slot freed


def test_an_attacker_address_cannot_lock_the_user_out_elsewhere() -> None:
    limiter = LoginLimiter(10, clock=Clock())
    for _ in range(10):
        limiter.reserve("admin", "attacker")
    for _ in range(5):
        assert refused(limiter, "admin", "attacker").details["retry_after_s"] == 60
    limiter.reserve("admin", "office")  # the admin elsewhere is still checked
    limiter.reserve("bob", "attacker")  # and the pair limit is not the whole address's


def test_a_refused_attempt_does_not_extend_the_lockout() -> None:
    clock = Clock()
    limiter = LoginLimiter(1, clock=clock)
    limiter.reserve("a", "x")
    for _ in range(5):
        clock.now += 10
        refused(limiter, "a", "x")
    clock.now = 1060.0
    limiter.reserve("a", "x")


def test_success_releases_its_reservation() -> None:
    clock = Clock()
    limiter = LoginLimiter(2, clock=clock)
    for _ in range(10):
        reservation = limiter.reserve("a", "x")
        clock.now += 0.001
        limiter.release(reservation)
    limiter.reserve("a", "x")
    limiter.reserve("a", "x")
    refused(limiter, "a", "x")


def test_an_address_spraying_usernames_is_limited() -> None:
    limiter = LoginLimiter(2, clock=Clock())
    for i in range(2 * CLIENT_FACTOR):
        limiter.reserve(f"user{i}", "x")
    refused(limiter, "fresh-user", "x")
    limiter.reserve("fresh-user", "y")  # fresh-user was not charged for the refused attempt
    limiter.reserve("fresh-user", "z")


def test_distributed_guessing_gets_one_try_per_address_past_the_ceiling() -> None:
    clock = Clock()
    limiter = LoginLimiter(3, clock=clock)
    ceiling = 3 * USER_FACTOR
    for i in range(ceiling):  # first tries from fresh addresses are always checked...
        limiter.reserve("admin", f"bot{i}")
    error = refused(limiter, "admin", "bot0")  # ...but no second one (below the pair limit of 3)
    assert error.details == {"retry_after_s": 60}
    limiter.reserve("admin", "bot-new")  # an address that has not failed for admin is still checked
    refused(limiter, "admin", "bot-new")
    limiter.reserve("carol", "bot0")  # other users are untouched
    clock.now += 60
    limiter.reserve("admin", "bot0")  # the ceiling slides with the window


def test_concurrent_reservations_cannot_exceed_the_limit() -> None:
    """Reserving before the (slow) password check means parallel guesses are counted up front."""
    limiter = LoginLimiter(3, clock=Clock())
    granted = 0
    for _ in range(10):
        try:
            limiter.reserve("a", "x")
            granted += 1
        except ResourceExhausted:
            pass
    assert granted == 3


def test_memory_is_bounded_least_recently_used_first() -> None:
    limiter = LoginLimiter(1, max_keys=3, clock=Clock())
    limiter.reserve("a", "x")  # pair(a,x), client x, user a
    limiter.reserve("b", "y")  # evicts all three of the first attempt's keys
    limiter.reserve("a", "x")  # forgotten: allowed again; evicts b's
    refused(limiter, "a", "x")
    assert len(limiter._attempts) == 3
    assert all(len(attempts) <= 10 for attempts in limiter._attempts.values())
