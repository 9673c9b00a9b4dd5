"""How a scenario calls the stack: one session (the edge's client and the admin's token), a `Caller` that
records every answer for the report and notes the ones not answered as expected."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

WAIT_S = 30  # an upper bound for eventual outcomes (a frame, a log line, a scrape), never a timed assertion

Record = Callable[[str, Any, int | None], None]  # (the request as shown, its answer, its status)


def _ignore(request: str, answer: Any, status: int | None) -> None:
    """The tests' recorder: they assert on the answers instead."""


@dataclass
class Session:
    """One client of the edge; `login` stores the admin's token, which every later call carries."""

    http: httpx.Client
    token: str = ""


@dataclass
class Caller:
    """Makes a scenario's calls, hands each answer to `record` and notes the ones not answered as expected."""

    session: Session
    record: Record = _ignore
    surprises: list[str] = field(default_factory=list)

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        """One request, neither recorded nor judged."""
        sent = dict(headers or {})
        if auth and self.session.token:
            sent.setdefault("Authorization", f"Bearer {self.session.token}")
        return self.session.http.request(method, path, json=body, headers=sent)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        check: bool = True,
        shown: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        """One request through the edge, recorded (`shown` instead of a body holding a password) and judged:
        `expect` is the status it must get, else any 2xx; `check=False` takes any answer."""
        response = self.send(method, path, body, headers=headers, auth=auth)
        self._note(_request_text(method, path, body, shown), response, expect, check)
        return response

    def until(
        self, method: str, path: str, body: Any, done: Callable[[httpx.Response], bool]
    ) -> httpx.Response:
        """The call repeated until done(answer) or WAIT_S passed, only the last answer recorded: services
        write their logs and counters asynchronously."""
        deadline = time.monotonic() + WAIT_S
        while True:
            response = self.send(method, path, body)
            if done(response) or time.monotonic() > deadline:
                self._note(_request_text(method, path, body, None), response, None, True)
                return response
            time.sleep(0.25)

    def fetch(
        self,
        method: str,
        url: str,
        label: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        expect: int | None = None,
        body_shown: bool = True,
    ) -> httpx.Response:
        """A signed URL, without the token (the signature is the permission), recorded as `label`."""
        response = self.session.http.request(method, url, content=content, headers=headers)
        shown = (response.text or "(empty body)") if body_shown else "(not shown)"
        self.record(label, shown, response.status_code)
        self._judge(label, response.status_code, expect, True)
        return response

    def show(self, label: str, value: Any, status: int | None = None) -> None:
        """Records something a scenario derived from its answers (names, audit entries, frames)."""
        self.record(label, value, status)

    def _note(self, request: str, response: httpx.Response, expect: int | None, check: bool) -> None:
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text
        self.record(request, answer, response.status_code)
        self._judge(request, response.status_code, expect, check)

    def _judge(self, request: str, status: int, expect: int | None, check: bool) -> None:
        wanted = status == expect if expect is not None else 200 <= status < 300
        if check and not wanted:
            self.surprises.append(f"{request} -> {status}")


def _request_text(method: str, path: str, body: Any, shown: Any) -> str:
    return f"{method} {path}" + (f" {json.dumps(shown if shown is not None else body)}" if body else "")


def json_of(response: httpx.Response) -> Any:
    """The answer's JSON, for a scenario that goes on with it; a failed answer stops the scenario."""
    if not response.is_success:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text}"
        )
    return response.json()
