"""The report's smoke test: every scenario of tools/report/scenarios.py against the report's stack, each
answer recorded as markdown (scrubbed, then cut to length) and every step judged."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.launcher import Stack
from tools.report.caller import Caller, Session
from tools.report.scenarios import HEALTH, LOGIN, SCENARIOS, Context, Scenario
from tools.report.scrub import redact
from tools.report.sources import dependency_live

OUTPUT_LIMIT = 3000  # characters of one answer shown in the report
UPLOAD = b"launchpad wiring report\n"
MESSAGE = {"hello": "report"}


def to_json(value: Any, indent: str = "") -> str:
    """Indented JSON whose arrays without objects stay on one line: `"rows": [[1]]`, as curl shows it."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Step:
    title: str
    service: str = ""  # the backend that answered, whose dependency modes the summary table shows
    ok: bool = True
    entries: list[str] = field(default_factory=list)  # markdown: each request and its answer
    # The report's Scrubber, applied before an answer is cut to length: a secret cut in half would not match.
    scrub: Callable[[str], str] = str
    limit: int = OUTPUT_LIMIT

    def show(self, request: str, answer: Any, status: int | None = None, limit: int | None = None) -> None:
        head = f"`{self.scrub(request)}`" + (f" -> {status}" if status is not None else "")
        body = self.scrub(answer if isinstance(answer, str) else to_json(redact(answer)))
        cut = limit or self.limit
        if len(body) > cut:
            body = body[:cut] + f"\n... ({len(body) - cut} more characters)"
        self.entries += [head, "", "```json" if not isinstance(answer, str) else "```", body, "```", ""]


@dataclass
class Smoke:
    steps: list[Step] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)  # the /health answer, for the dependency modes
    token: str = ""  # the admin's, when the login worked


def run(stack: Stack, password: str, scrub: Callable[[str], str]) -> Smoke:
    """Every scenario in order, through the edge the way the README's curl examples call it."""
    smoke = Smoke()
    audit_log = Path(stack.env["LAUNCHPAD_DATA_DIR"]) / "audit.log"
    ctx = Context("report", password, audit_log, UPLOAD, MESSAGE)
    with httpx.Client(base_url=stack.edge_url, timeout=60) as http:
        session = Session(http)
        for scenario in SCENARIOS:
            if scenario.needs_admin and not session.token:
                break  # every other call needs the admin's token; the login step says why it failed
            outcome = _step(smoke, scenario, session, ctx, scrub)
            if scenario is HEALTH and isinstance(outcome, httpx.Response) and outcome.is_success:
                smoke.health = outcome.json()
                # PROM_URL's Prometheus scrapes the documented ports, not this stack's.
                ctx = dataclasses.replace(
                    ctx, scraped=not dependency_live(smoke.health, "metrics", "prometheus")
                )
        smoke.token = session.token
    return smoke


def _step(
    smoke: Smoke, scenario: Scenario[Any], session: Session, ctx: Context, scrub: Callable[[str], str]
) -> Any:
    """One scenario as a step of the report: its answers recorded, its verdict; None when it raised."""
    limit = OUTPUT_LIMIT * (20 if scenario.uncut else 1)
    step = Step(scenario.title, scenario.service, scrub=scrub, limit=limit)
    smoke.steps.append(step)
    caller = Caller(session, step.show)
    try:
        outcome = scenario.run(caller, ctx)
        step.ok = not caller.surprises and scenario.passed(outcome)
    except Exception as exc:  # recorded in the report, which is what this run is for
        step.ok = False
        step.show("error", f"{type(exc).__name__}: {exc}")
        return None
    if scenario is LOGIN and outcome.status_code == 401:
        step.entries.append(
            "BLOCKED: the admin already exists with another password; set LAUNCHPAD_ADMIN_PASSWORD to it."
        )
    return outcome
