"""Helpers of the suites that start their own stacks on uncommon ports."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pytest

from services.core.config import SERVICES
from tests.conftest import ISOLATED

WAIT_S = 60.0  # upper bound of every wait for a state change, not a timing assertion
T = TypeVar("T")


def stack_env(
    data_dir: Path, base: int, password: str, services: Iterable[str] = SERVICES, **extra: str
) -> dict[str, str]:
    """Embedded defaults (no live variable or topology inherited), the edge on base+1, each service on
    base+port-8000."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    env.update(
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=password,
        LAUNCHPAD_EDGE_PORT=str(base + 1),
        LAUNCHPAD_PUBLIC_URL=f"http://127.0.0.1:{base + 1}",
        **{f"LAUNCHPAD_{name.upper()}_PORT": str(base + SERVICES[name] - 8000) for name in services},
    )
    env.update(extra)
    return env


def eventually(probe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Polls probe() until done(result) holds, up to WAIT_S; fails with the last result otherwise."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {result!r} after {WAIT_S:.0f}s")
        time.sleep(0.2)
