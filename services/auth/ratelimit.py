"""In-process limit on failed logins, in a sliding minute, shaped so that nobody can lock a user out.

With N = LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE, failures are counted (as Keycloak's brute-force detection and the
OWASP authentication guidance do it, keyed by address) under three keys:

- (username, client address): N. The main limit: a guesser at one address gets N tries per user per minute,
  and only that address is refused -- the user still logs in from anywhere else.
- client address: CLIENT_FACTOR * N, across usernames, against one address spraying many usernames. Higher
  than N so that a few people behind one NAT mistyping their passwords do not block each other.
- username: USER_FACTOR * N, a ceiling against guessing spread over many addresses. It is enforced only on
  pairs that already failed in the window, never on an address's first attempt for that user: a user at an
  address that has not failed always gets their password checked, so the ceiling cannot lock them out. Against
  a distributed guesser it cuts each address from N tries per minute to one. (Letting a correct password
  through the ceiling instead would slow nothing: every guess would still be checked.)

An attempt reserves its slots before the password is checked, so concurrent guesses cannot all slip past the
check; a successful login gives them back. Memory is bounded: at most `max_keys` keys (least recently used
dropped first), each holding at most its limit of timestamps.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from services.core.errors import ResourceExhausted

WINDOW_S = 60.0
CLIENT_FACTOR = 3
USER_FACTOR = 10

Key = tuple[str, str, str]  # (kind, username, client); a tuple, so no username can forge another key


@dataclass(frozen=True, slots=True)
class Reservation:
    """One attempt's slots, to give back with release() when the password was right."""

    keys: tuple[Key, ...]
    stamp: float


class LoginLimiter:
    def __init__(
        self, per_minute: int, *, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        pair = max(1, per_minute)
        self._limits = {"pair": pair, "client": CLIENT_FACTOR * pair, "user": USER_FACTOR * pair}
        self._max_keys = max_keys
        self._clock = clock
        self._attempts: OrderedDict[Key, deque[float]] = OrderedDict()

    def reserve(self, username: str, client: str) -> Reservation:
        """Counts an attempt, or raises ResourceExhausted (with retry_after_s) when a limit is reached."""
        now = self._clock()
        pair: Key = ("pair", username, client)
        by_client: Key = ("client", "", client)
        by_user: Key = ("user", username, "")
        waits = [self._wait(pair, now), self._wait(by_client, now)]
        if self._count(pair):  # the ceiling slows only addresses already failing for this user
            waits.append(self._wait(by_user, now))
        retry_after = max(waits)
        if retry_after > 0:
            seconds = math.ceil(retry_after)
            raise ResourceExhausted(
                f"too many failed login attempts; retry in {seconds} s", retry_after_s=seconds
            )
        keys = (pair, by_client, by_user)
        for key in keys:  # the username is charged even when not enforced: it measures the guessing rate
            self._slot(key).append(now)
        return Reservation(keys, now)

    def release(self, reservation: Reservation) -> None:
        """The attempt succeeded (or failed for the server's reasons): it does not count as a failure."""
        for key in reservation.keys:
            attempts = self._attempts.get(key)
            if attempts is not None and reservation.stamp in attempts:
                attempts.remove(reservation.stamp)

    def _count(self, key: Key) -> int:
        attempts = self._attempts.get(key)
        return len(attempts) if attempts is not None else 0

    def _wait(self, key: Key, now: float) -> float:
        """Seconds until key may try again (0 when it may now); drops attempts older than the window."""
        attempts = self._attempts.get(key)
        if attempts is None:
            return 0.0
        while attempts and attempts[0] <= now - WINDOW_S:
            attempts.popleft()
        if len(attempts) < self._limits[key[0]]:
            return 0.0
        return attempts[0] + WINDOW_S - now

    def _slot(self, key: Key) -> deque[float]:
        attempts = self._attempts.get(key)
        if attempts is None:
            # maxlen: a full username key keeps its newest stamps while first attempts are still let through
            attempts = self._attempts[key] = deque(maxlen=self._limits[key[0]])
            if len(self._attempts) > self._max_keys:
                self._attempts.popitem(last=False)
        else:
            self._attempts.move_to_end(key)
        return attempts
