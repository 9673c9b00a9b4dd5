"""The dependency registry: what each process depends on, in which mode, and whether it answers.

/health (through StatusService) and the wiring report read it; the server's health status follows it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar


class Mode(StrEnum):
    LIVE = "live"  # the real server named by its variable
    EMBEDDED = "embedded"  # not configured (or SIMULATION_MODE=true): the in-process default, by choice
    FALLBACK = "fallback"  # configured but not answering at start-up (auto mode): the embedded default


Check = Callable[[], Awaitable[None]]  # raises when the dependency does not answer


class LiveClient(Protocol):
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


L = TypeVar("L", bound=LiveClient)


@dataclass(slots=True)
class Dependency:
    name: str
    mode: Mode
    target: str = ""
    required: bool = True
    healthy: bool = True
    detail: str = ""
    remediation: str = ""
    check: Check | None = None


def select_mode(simulation: bool | None, configured: bool, reachable: bool) -> Mode:
    """The mode rule of DESIGN section 4.

    SIMULATION_MODE=true -> embedded; not configured -> embedded; configured and answering -> live;
    configured, not answering: auto -> fallback, SIMULATION_MODE=false -> live (and unhealthy: never write
    the data somewhere else silently).
    """
    if simulation is True or not configured:
        return Mode.EMBEDDED
    if reachable or simulation is False:
        return Mode.LIVE
    return Mode.FALLBACK


async def answers(check: Check, timeout_s: float | None = 5.0) -> tuple[bool, str]:
    """Whether a dependency answers its check (within timeout_s) at start-up, and if not, why."""
    try:
        await asyncio.wait_for(check(), timeout_s)
    except Exception as exc:  # any failure means "down"; the detail says why
        return False, _why(exc)
    return True, ""


async def keep_live(
    deps: Registry,
    name: str,
    simulation: bool | None,
    live: L | None,
    *,
    target: str,
    detail: str,
    unanswered: str,
    timeout_s: float | None = 5.0,
) -> tuple[Mode, L | None]:
    """The mode of a dependency whose live client was made when configured and not SIMULATION_MODE=true
    (else None). LIVE: the client, registered as `name` (unhealthy, saying `unanswered`, if it did not answer
    at start-up). Other modes: no client (it is closed); the caller registers its embedded default."""
    reachable = live is not None and (await answers(live.ping, timeout_s))[0]
    mode = select_mode(simulation, live is not None, reachable)
    if mode is Mode.LIVE and live is not None:
        deps.add(name, mode, target, detail=detail, check=live.ping)
        if not reachable:
            deps.mark(name, False, unanswered)
        return mode, live
    if live is not None:
        await live.close()
    return mode, None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


_CREDENTIALS = re.compile(r"(//)([^@/]+)@")


def redact(target: str) -> str:
    """A DSN or URL without its credentials: postgresql://user:pw@host/db -> postgresql://***@host/db."""
    target = _CREDENTIALS.sub(r"\1***@", target)
    return re.sub(r"(password|token|secret|key)=[^&\s]+", r"\1=***", target, flags=re.IGNORECASE)


class Registry:
    """Dependencies of one process, in registration order."""

    def __init__(self) -> None:
        self._deps: dict[str, Dependency] = {}

    def add(
        self,
        name: str,
        mode: Mode,
        target: str = "",
        *,
        required: bool = True,
        detail: str = "",
        remediation: str = "",
        check: Check | None = None,
    ) -> Dependency:
        dep = Dependency(name, mode, redact(target), required, True, detail, remediation, check)
        self._deps[name] = dep
        return dep

    def mark(self, name: str, healthy: bool, detail: str = "") -> None:
        dep = self._deps[name]
        dep.healthy, dep.detail = healthy, detail or dep.detail

    def serving(self) -> bool:
        return all(dep.healthy for dep in self._deps.values() if dep.required)

    def all(self) -> list[Dependency]:
        return list(self._deps.values())

    async def probe(self) -> bool:
        """Runs every check once, records the outcome, and says whether the process can serve."""
        for dep in self._deps.values():
            if dep.check is None:
                continue
            try:
                await dep.check()
            except Exception as exc:  # any failure means "down"; the detail says why
                dep.healthy, dep.detail = False, _why(exc)
            else:
                dep.healthy = True
        return self.serving()
