"""The supervision policy on a fake clock: backoff, health gate, reset after a stable run, give-up rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.core.supervision import (
    FAILED,
    RESTARTING,
    RUNNING,
    STARTING,
    Policy,
    Supervisor,
    last_error,
    read_status,
    write_status,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Fake:
    """A member whose liveness and health the test sets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.starts = 0
        self.code: int | None = None
        self.ready = False
        self.error = ""
        self.stopped = 0

    def start(self) -> None:
        self.starts += 1
        self.code, self.ready = None, False

    def exit_code(self) -> int | None:
        return self.code

    def healthy(self) -> bool:
        return self.ready

    def stop(self) -> None:
        self.stopped += 1
        self.code = -9

    def last_error(self) -> str:
        return self.error

    def crash(self, code: int = -9, error: str = "") -> None:
        self.code, self.ready, self.error = code, False, error


def supervised(
    *names: str, policy: Policy | None = None
) -> tuple[Supervisor, Clock, dict[str, Fake], list[str]]:
    clock, lines, published = Clock(), [], []
    members = {name: Fake(name) for name in names}
    supervisor = Supervisor(
        list(members.values()), policy or Policy(), clock=clock, report=lines.append, publish=published.append
    )
    supervisor.start_all()
    for member in members.values():
        member.ready = True
    supervisor.step()
    return supervisor, clock, members, lines


def crash_and_restart(supervisor: Supervisor, clock: Clock, member: Fake) -> float:
    """Crashes it, waits out the backoff, brings it back healthy; returns the backoff waited."""
    member.crash()
    supervisor.step()
    track = supervisor.tracks[member.name]
    waited = track.restart_at - clock.now
    clock.now = track.restart_at
    supervisor.step()
    member.ready = True
    clock.now += 1.0
    supervisor.step()
    return waited


def test_a_crash_restarts_after_a_backoff_and_counts_as_back_only_once_healthy() -> None:
    supervisor, clock, members, lines = supervised("data", "logs")
    assert supervisor.settled() and supervisor.tracks["data"].state == RUNNING
    assert lines == []  # the first start is not a "back" event

    members["data"].crash(-9, "boom")
    supervisor.step()
    track = supervisor.tracks["data"]
    assert track.state == RESTARTING and track.restarts == 1 and track.last_exit_code == -9
    assert track.last_error == "boom"
    assert lines == ["launchpad: data exited with code -9; restarting in 0.5 s (restart 1)"]
    assert supervisor.tracks["logs"].state == RUNNING  # the others are untouched

    clock.now += 0.4
    supervisor.step()
    assert members["data"].starts == 1  # not before the backoff is over
    clock.now += 0.1
    supervisor.step()
    assert members["data"].starts == 2 and track.state == STARTING
    clock.now += 1.3
    supervisor.step()
    assert track.state == STARTING  # alive but not healthy yet: not back
    members["data"].ready = True
    supervisor.step()
    assert track.state == RUNNING
    assert lines[-1] == "launchpad: data is back (SERVING after 1.3 s)"
    assert supervisor.document()["processes"]["data"] == {
        "state": "running",
        "restarts": 1,
        "last_exit_code": -9,
        "last_error": "boom",
    }


def test_the_backoff_doubles_up_to_its_cap_and_resets_after_a_stable_run() -> None:
    policy = Policy(max_backoff_s=2.0, crash_limit=100, stable_after_s=30.0)
    supervisor, clock, members, lines = supervised("metrics", policy=policy)
    waits = []
    for _ in range(5):
        waits.append(crash_and_restart(supervisor, clock, members["metrics"]))
        clock.now += 1.0  # well short of stable_after_s
        supervisor.step()
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]
    clock.now += 30.0
    supervisor.step()  # healthy for stable_after_s: the next crash starts from the first backoff again
    assert crash_and_restart(supervisor, clock, members["metrics"]) == 0.5
    assert "restarting in 2.0 s (restart 5)" in lines[-4]


def test_too_many_crashes_within_the_window_give_up_with_the_last_error_once() -> None:
    policy = Policy(crash_limit=3, crash_window_s=60.0)
    supervisor, clock, members, lines = supervised("logs", "data", policy=policy)
    for _ in range(2):
        crash_and_restart(supervisor, clock, members["logs"])
    members["logs"].crash(1, "RuntimeError: disk full")
    supervisor.step()
    track = supervisor.tracks["logs"]
    assert track.state == FAILED and track.restarts == 2
    assert lines[-1] == (
        "launchpad: logs exited with code 1; giving up (3 exits within 60 s). Last error: RuntimeError: disk full"
    )
    starts, count = members["logs"].starts, len(lines)
    for _ in range(10):
        clock.now += 60.0
        supervisor.step()
    assert members["logs"].starts == starts and len(lines) == count  # not restarted, said once
    assert supervisor.tracks["data"].state == RUNNING
    assert supervisor.settled()


def test_crashes_spread_wider_than_the_window_never_give_up() -> None:
    policy = Policy(crash_limit=3, crash_window_s=60.0, stable_after_s=1000.0)
    supervisor, clock, members, _ = supervised("auth", policy=policy)
    for _ in range(6):
        crash_and_restart(supervisor, clock, members["auth"])
        clock.now += 61.0
        supervisor.step()
    assert supervisor.tracks["auth"].state == RUNNING and supervisor.tracks["auth"].restarts == 6


def test_a_process_that_dies_at_every_start_fails_after_the_failed_start_limit() -> None:
    policy = Policy(start_failures_limit=3)
    clock, lines = Clock(), []
    member = Fake("metrics")
    supervisor = Supervisor([member], policy, clock=clock, report=lines.append)
    supervisor.start_all()
    for _ in range(10):
        member.crash(1, "metrics: cannot listen on 127.0.0.1:1: is it already running?")
        supervisor.step()
        clock.now += 60.0
        supervisor.step()
    assert member.starts == 3  # the first start and two restarts
    track = supervisor.tracks["metrics"]
    assert track.state == FAILED and track.restarts == 2
    assert lines[-1].endswith(
        "giving up (3 failed starts in a row). Last error: metrics: cannot listen on 127.0.0.1:1: "
        "is it already running?"
    )
    assert sum("giving up" in line for line in lines) == 1


def test_a_start_that_never_becomes_healthy_is_stopped_and_counts_as_a_failed_start() -> None:
    policy = Policy(start_timeout_s=10.0, start_failures_limit=2)
    clock, lines = Clock(), []
    member = Fake("ai")
    supervisor = Supervisor([member], policy, clock=clock, report=lines.append)
    supervisor.start_all()
    clock.now += 9.0
    supervisor.step()
    assert member.stopped == 0
    clock.now += 1.0
    supervisor.step()
    assert member.stopped == 1 and supervisor.tracks["ai"].state == RESTARTING
    assert lines[-1] == "launchpad: ai not healthy within 10 s; restarting in 0.5 s (restart 1)"
    clock.now += 0.5
    supervisor.step()
    clock.now += 10.0
    supervisor.step()
    assert member.stopped == 2 and supervisor.tracks["ai"].state == FAILED
    assert "2 failed starts in a row" in lines[-1]


def test_a_healthy_run_resets_the_failed_start_count() -> None:
    policy = Policy(start_failures_limit=2, crash_limit=100)
    supervisor, clock, members, _ = supervised("deploy", policy=policy)
    for _ in range(4):  # each crash comes after it was healthy: never a failed start
        crash_and_restart(supervisor, clock, members["deploy"])
    assert supervisor.tracks["deploy"].state == RUNNING


def test_every_change_is_published_and_the_status_file_is_replaced_atomically(tmp_path: Path) -> None:
    published: list[dict[str, Any]] = []
    clock, member = Clock(), Fake("edge")
    supervisor = Supervisor([member], clock=clock, report=lambda line: None, publish=published.append)
    supervisor.start_all()
    member.ready = True
    supervisor.step()
    supervisor.step()  # nothing changed: nothing published
    assert [d["processes"]["edge"]["state"] for d in published] == ["starting", "running"]

    path = tmp_path / "run" / "supervision.json"
    assert read_status(path) is None
    write_status(path, published[-1])
    assert read_status(path) == published[-1]
    assert [p.name for p in path.parent.iterdir()] == ["supervision.json"]  # no temp file left


def test_the_last_error_is_the_last_line_that_says_something_went_wrong() -> None:
    traceback = "Traceback (most recent call last):\n  File x\nValueError: bad\n\n  \n"
    assert last_error(traceback) == "ValueError: bad"
    info = '{"level": "info", "message": "serving"}\n'
    assert last_error(info * 3) == ""  # a SIGKILLed process: nothing went wrong in it
    failed = '{"level": "error", "message": "health probe failed", "exc": "Traceback\\nOSError: gone"}\n'
    assert last_error(failed + info) == "health probe failed: OSError: gone"
    assert (
        last_error("metrics: cannot listen on 127.0.0.1:1\n" + info)
        == "metrics: cannot listen on 127.0.0.1:1"
    )
    assert last_error("") == ""


def test_the_edge_shows_the_section_only_when_a_supervisor_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.health import SUPERVISION_FILE_ENV, _supervision

    path = tmp_path / "supervision.json"
    monkeypatch.delenv(SUPERVISION_FILE_ENV, raising=False)
    assert _supervision() is None  # Helm, compose: nothing supervises, no section
    monkeypatch.setenv(SUPERVISION_FILE_ENV, str(path))
    assert _supervision() is None  # named but not written yet
    document = {"supervisor": 1, "processes": {"logs": {"state": "failed", "restarts": 2}}}
    write_status(path, document)
    assert _supervision() == document
