"""The report's own stack: every service and the edge on ports of its own, in a throwaway data dir, for the
smoke test; the caller's dependency variables reach it, so it is live wherever they name a server."""

from __future__ import annotations

import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from services.core.config import SERVICES
from services.launcher import Stack
from tools.report import smoke
from tools.report.smoke import Smoke

# Edge base+1, services base+11..base+18, their /metrics base+1011..: beside `make up` and the test stacks.
DEFAULT_BASE_PORT = 37000
START_TIMEOUT_S = 120
# Set by the report for its own stack; the caller's values would move it onto other ports or folders.
_STACK_OWNED = re.compile(r"LAUNCHPAD_(\w+_PORT|\w+_ADDR|DATA_DIR|LOG_DIR|PUBLIC_URL|BACKENDS)")


def stack_env(env: dict[str, str], base_port: int, data_dir: Path, password: str) -> dict[str, str]:
    own = {k: v for k, v in env.items() if not _STACK_OWNED.fullmatch(k)}
    own.update(
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=password,
        LAUNCHPAD_EDGE_PORT=str(base_port + 1),
        LAUNCHPAD_PUBLIC_URL=f"http://127.0.0.1:{base_port + 1}",
        **{f"LAUNCHPAD_{name.upper()}_PORT": str(base_port + port - 8000) for name, port in SERVICES.items()},
    )
    return own


def stack_ports(base_port: int) -> list[int]:
    """Every port the report's stack listens on: the edge, each service and its /metrics (1000 above)."""
    return [base_port + 1] + [base_port + port - 8000 + d for port in SERVICES.values() for d in (0, 1000)]


def describe_ports(base_port: int) -> str:
    return f"edge {base_port + 1}, services {base_port + 11}-{base_port + 18}"


def verify(
    env: dict[str, str], base_port: int, password: str, scrub: Callable[[str], str], output: IO[bytes]
) -> tuple[Smoke | None, str]:
    """Starts the stack (its stdout/stderr to `output`), runs the smoke test, stops it: (the smoke test's
    steps, why the stack did not start)."""
    if busy := [port for port in stack_ports(base_port) if _listening(port)]:
        # gRPC servers set SO_REUSEPORT: started anyway, the report would share ports with whatever runs there.
        return None, f"ports {busy} are in use: pick free ones with --base-port"
    with tempfile.TemporaryDirectory(prefix="launchpad-report-") as data_dir:
        stack = Stack(stack_env(env, base_port, Path(data_dir), password), output=output)
        try:
            stack.start(timeout_s=START_TIMEOUT_S)
        except (TimeoutError, RuntimeError) as exc:
            return None, str(exc)
        try:
            return smoke.run(stack, password, scrub), ""
        finally:
            stack.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
