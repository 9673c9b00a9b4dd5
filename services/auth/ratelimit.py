"""In-process limit on failed logins: at most N failures per key (username, client) in a sliding minute.

An attempt reserves a slot in every key before the password is checked, so concurrent guesses cannot all slip
past the check; a successful login gives the slots back. Memory is bounded: at most `max_keys` keys (least
recently used dropped first), each holding at most N timestamps.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from services.core.errors import ResourceExhausted

WINDOW_S = 60.0


class LoginLimiter:
    def __init__(
        self, per_minute: int, *, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = max(1, per_minute)
        self._max_keys = max_keys
        self._clock = clock
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def reserve(self, keys: Sequence[str]) -> float:
        """Counts an attempt against every key, or raises ResourceExhausted when one is at its limit.

        Returns the attempt's timestamp, for release() after a successful login.
        """
        now = self._clock()
        retry_after = max(self._wait(key, now) for key in keys)
        if retry_after > 0:
            seconds = math.ceil(retry_after)
            raise ResourceExhausted(
                f"too many failed login attempts; retry in {seconds} s", retry_after_s=seconds
            )
        for key in keys:
            self._slot(key).append(now)
        return now

    def release(self, keys: Sequence[str], stamp: float) -> None:
        """The attempt at `stamp` succeeded: it does not count as a failure."""
        for key in keys:
            attempts = self._attempts.get(key)
            if attempts is not None and stamp in attempts:
                attempts.remove(stamp)

    def _wait(self, key: str, now: float) -> float:
        """Seconds until key may try again (0 when it may now); drops attempts older than the window."""
        attempts = self._attempts.get(key)
        if attempts is None:
            return 0.0
        while attempts and attempts[0] <= now - WINDOW_S:
            attempts.popleft()
        if len(attempts) < self._limit:
            return 0.0
        return attempts[0] + WINDOW_S - now

    def _slot(self, key: str) -> deque[float]:
        attempts = self._attempts.get(key)
        if attempts is None:
            attempts = self._attempts[key] = deque(maxlen=self._limit)
            if len(self._attempts) > self._max_keys:
                self._attempts.popitem(last=False)
        else:
            self._attempts.move_to_end(key)
        return attempts
