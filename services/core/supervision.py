"""Supervision policy: restart what crashed, with backoff, health-gated, and give up on what keeps crashing.

Nothing here spawns anything. A Member is whatever can be started, asked whether it still runs and whether
it is healthy: a service process (services/launcher.py) or, in one process, a server task. The Supervisor
decides, on an injected clock, when to restart each member, when a restart counts as recovered (the member's
own health check says so), and when to stop trying; it reports every event as one line and its whole state
as a JSON-able document (the edge's /health shows it).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

RUNNING, STARTING, RESTARTING, FAILED = "running", "starting", "restarting", "failed"
STATUS_FILE = "supervision.json"  # in the data dir; the edge reads it (LAUNCHPAD_SUPERVISION_FILE)


@dataclass(frozen=True, slots=True)
class Policy:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_after_s: float = 60.0  # healthy this long: the backoff and the failed-start count start over
    crash_limit: int = 5  # this many exits within crash_window_s: failed
    crash_window_s: float = 60.0
    start_timeout_s: float = 60.0  # a start not healthy by then is stopped and counts as a failed start
    start_failures_limit: int = 3  # consecutive failed starts: failed


class Member(Protocol):
    name: str

    def start(self) -> None: ...
    def exit_code(self) -> int | None: ...  # None while it runs
    def healthy(self) -> bool: ...
    def stop(self) -> None: ...  # ends a start that is not healthy in time (then exit_code is set)
    def last_error(self) -> str: ...


@dataclass(slots=True)
class Track:
    """One member's supervision state, changed only through the Supervisor's policy."""

    name: str
    state: str = STARTING
    restarts: int = 0
    last_exit_code: int | None = None
    last_error: str = ""
    started_at: float = 0.0
    healthy_since: float | None = None
    restart_at: float = 0.0
    backoff_s: float = 0.0
    failed_starts: int = 0
    exits: deque[float] = field(default_factory=deque)

    def document(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_error": self.last_error,
        }


class Supervisor:
    """Call step() every few hundred milliseconds; it never blocks longer than one member's health check."""

    def __init__(
        self,
        members: list[Member],
        policy: Policy = Policy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str], None] = print,
        publish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.members = {m.name: m for m in members}
        self.policy = policy
        self.clock = clock
        self.report = report
        self.publish = publish
        self.tracks = {m.name: Track(m.name) for m in members}
        self.events: list[str] = []

    def start_all(self) -> None:
        now = self.clock()
        for name, member in self.members.items():
            self.tracks[name].started_at = now
            member.start()
        self._publish()

    def settled(self) -> bool:
        """Every member running or given up on (start-up is over)."""
        return all(t.state in (RUNNING, FAILED) for t in self.tracks.values())

    def step(self) -> None:
        changed = False
        for name, member in self.members.items():
            changed |= self._step_one(self.tracks[name], member, self.clock())
        if changed:
            self._publish()

    def document(self) -> dict[str, Any]:
        return {"supervisor": os.getpid(), "processes": {n: t.document() for n, t in self.tracks.items()}}

    def _step_one(self, track: Track, member: Member, now: float) -> bool:
        if track.state == FAILED:
            return False
        if track.state == RESTARTING:
            if now < track.restart_at:
                return False
            track.state, track.started_at = STARTING, now
            member.start()
            return True
        code = member.exit_code()
        if code is not None:
            return self._exited(track, member, code, now, healthy=track.state == RUNNING)
        if track.state == STARTING:
            return self._check_start(track, member, now)
        if track.healthy_since is not None and now - track.healthy_since >= self.policy.stable_after_s:
            track.backoff_s, track.failed_starts, track.healthy_since = 0.0, 0, None
        return False

    def _check_start(self, track: Track, member: Member, now: float) -> bool:
        if member.healthy():
            back = track.restarts > 0
            track.state, track.healthy_since, track.failed_starts = RUNNING, now, 0
            if back:
                self._say(f"{track.name} is back (SERVING after {now - track.started_at:.1f} s)")
            return True
        if now - track.started_at < self.policy.start_timeout_s:
            return False
        member.stop()
        track.failed_starts += 1
        detail = f"not healthy within {self.policy.start_timeout_s:.0f} s"
        return self._exited(track, member, member.exit_code(), now, healthy=False, detail=detail)

    def _exited(
        self, track: Track, member: Member, code: int | None, now: float, *, healthy: bool, detail: str = ""
    ) -> bool:
        policy = self.policy
        track.last_exit_code, track.last_error = code, member.last_error()
        track.healthy_since = None
        if not healthy and not detail:
            track.failed_starts += 1  # it died before it ever said SERVING
        track.exits.append(now)
        while track.exits and now - track.exits[0] > policy.crash_window_s:
            track.exits.popleft()
        what = detail or f"exited with code {code}"
        if len(track.exits) >= policy.crash_limit or track.failed_starts >= policy.start_failures_limit:
            track.state = FAILED
            why = (
                f"{len(track.exits)} exits within {policy.crash_window_s:.0f} s"
                if len(track.exits) >= policy.crash_limit
                else f"{track.failed_starts} failed starts in a row"
            )
            self._say(f"{track.name} {what}; giving up ({why}). Last error: {track.last_error or 'none'}")
            return True
        track.backoff_s = (
            policy.initial_backoff_s
            if track.backoff_s == 0
            else min(track.backoff_s * 2, policy.max_backoff_s)
        )
        track.restarts += 1
        track.state, track.restart_at = RESTARTING, now + track.backoff_s
        self._say(f"{track.name} {what}; restarting in {track.backoff_s:.1f} s (restart {track.restarts})")
        return True

    def _say(self, line: str) -> None:
        self.events.append(line)
        self.report(f"launchpad: {line}")

    def _publish(self) -> None:
        if self.publish is not None:
            self.publish(self.document())


def write_status(path: Path, document: dict[str, Any]) -> None:
    """Atomically: a reader sees the previous document or this one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The document a supervisor wrote, or None when there is none (nothing supervises this stack)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


_QUIET_LEVELS = frozenset({"debug", "info"})


def last_error(text: str) -> str:
    """The last line of a log or of captured stderr that says something went wrong: a plain line (a
    traceback's last line, a SystemExit message) or a JSON log entry at warning or above (its message, and
    its exception's last line). Routine JSON entries are skipped: a killed process has no last error."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line:
            continue
        if not line.startswith("{"):
            return line
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        if not isinstance(entry, dict) or entry.get("level") in _QUIET_LEVELS:
            continue
        message = str(entry.get("message", line))
        exc = str(entry.get("exc", "")).strip().splitlines()
        return f"{message}: {exc[-1]}" if exc else message
    return ""
