"""`make up`: every built service and the edge as separate processes, healthy before we say so, supervised.

A process that exits is started again with backoff and counts as back once its health says so (gRPC
grpc.health.v1 SERVING; the edge: /health answers). One that keeps crashing is given up on and reported with
its last error while the others keep running (policy: services/core/supervision.py). The state is written
to <data dir>/supervision.json, which the edge's /health shows.

Ctrl-C (or SIGTERM) stops them all: SIGTERM first (each drains in-flight calls), SIGKILL after a grace period.
Also used by `make bench` and the integration tests through `Stack` (unsupervised unless supervise=True).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core import supervision
from services.core.config import built_services, load_settings
from services.core.supervision import (
    FAILED,
    RUNNING,
    STATUS_FILE,
    Policy,
    Supervisor,
    write_status,
)

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 8.0
STEP_S = 0.2
STDERR_TAIL = 50  # lines of each process's stderr kept for its last error
SINGLE = "launchpad"  # the one process of the single topology, as the supervisor and /health name it


@dataclass
class Stack:
    env: dict[str, str]
    services: list[str] = field(default_factory=built_services)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    output: Any = None  # where the processes' stdout/stderr go (a file, subprocess.DEVNULL); None: inherited
    supervise: bool = False  # restart what exits (make up); tests that kill a process on purpose leave it off
    policy: Policy = field(default_factory=Policy)
    supervisor: Supervisor | None = field(default=None, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self, timeout_s: float = 60.0) -> None:
        if self.supervise:
            self._start_supervised(timeout_s)
            return
        env = self._child_env()
        for name, module in self.processes():
            self.procs[name] = self._spawn(module, env)
        try:
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def topology(self) -> str:
        return _settings(self.env, "edge").process.topology

    def processes(self) -> list[tuple[str, str]]:
        """(name, module) of each process to run: one for the single topology, else one per service (auth
        first: every other process fetches its JWKS to verify tokens) and the edge."""
        if self.topology == "single":
            return [(SINGLE, "services.single")]
        return [*((name, f"services.{name}") for name in self.services), ("edge", "edge")]

    def _child_env(self) -> dict[str, str]:
        env = {**self.env, "LAUNCHPAD_BACKENDS": ",".join(self.services)}
        env["PYTHONPATH"] = f"{ROOT / 'generated'}:{ROOT}"
        if self.supervise:
            env["LAUNCHPAD_SUPERVISION_FILE"] = str(self.status_path)
        return env

    def _spawn(self, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", module]
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=self.output, stderr=self.output)

    def _start_supervised(self, timeout_s: float) -> None:
        """Starts every process under a Supervisor; returns once each is healthy or given up on."""
        env = self._child_env()
        members = [ProcessMember(self, name, module, env) for name, module in self.processes()]
        self.supervisor = Supervisor(
            list(members),
            self.policy,
            report=lambda line: print(line, file=sys.stderr, flush=True),
            publish=lambda document: write_status(self.status_path, document),
        )
        self.supervisor.start_all()
        self._thread = threading.Thread(target=self._supervise, name="launchpad-supervisor", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        try:
            while not (self.supervisor.settled() and self._edge_sees_all()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not healthy after {timeout_s:.0f}s: {', '.join(self._pending())}")
                time.sleep(STEP_S)
        except BaseException:
            self.stop()
            raise

    def _edge_sees_all(self) -> bool:
        """The edge reaches every service that runs (its channels may still be backing off from a dial made
        before the service listened); trivially true when the edge itself was given up on."""
        failed = set(self.failed())
        if failed & {"edge", SINGLE}:
            return True
        services = _health_document(f"{self.edge_url}/health").get("services", {})
        return all(services.get(n, {}).get("status") == "SERVING" for n in self.services if n not in failed)

    def _pending(self) -> list[str]:
        assert self.supervisor is not None
        pending = [n for n, t in self.supervisor.tracks.items() if t.state not in (RUNNING, FAILED)]
        return sorted(pending) or ["the edge's view of the services"]

    def _supervise(self) -> None:
        assert self.supervisor is not None
        while not self._stopping.wait(STEP_S):
            self.supervisor.step()

    @property
    def status_path(self) -> Path:
        return _settings(self.env, "edge").process.data_dir / STATUS_FILE

    def failed(self) -> list[str]:
        """The processes the supervisor gave up on."""
        if self.supervisor is None:
            return []
        return [name for name, track in self.supervisor.tracks.items() if track.state == FAILED]

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.services)
        while pending:
            self.check_alive()
            pending = {name for name in pending if not _grpc_serving(self.address(name))}
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING after {timeout_s:.0f}s: {', '.join(sorted(pending))}")
            time.sleep(0.2)
        while not _http_ok(f"{self.edge_url}/health"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"edge not healthy after {timeout_s:.0f}s")
            time.sleep(0.2)

    def check_alive(self) -> None:
        """Raises when a process is gone for good: exited (unsupervised) or given up on (supervised)."""
        if self.supervisor is not None:
            for name in self.failed():
                error = self.supervisor.tracks[name].last_error
                raise RuntimeError(f"{name} failed: {error or 'see its log'}")
            return
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} (see reports/logs/{name}.log)")

    def address(self, name: str) -> str:
        return _settings(self.env, name).peers.address(name)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{_settings(self.env, 'edge').process.port}"

    def stop(self) -> None:
        self._stopping.set()  # no restart may race the shutdown
        if self._thread is not None:
            self._thread.join()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.supervisor is not None:  # nothing supervises this data dir any more
            self.status_path.unlink(missing_ok=True)


class ProcessMember:
    """One process of a Stack as the Supervisor sees it: started with the stack's environment, its stderr
    passed through to the stack's output with its last lines kept for the last error."""

    def __init__(self, stack: Stack, name: str, module: str, env: dict[str, str]) -> None:
        self.name, self.stack, self.module, self.env = name, stack, module, env
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.log_path = _settings(stack.env, "edge").process.log_dir / f"{name}.log"

    def start(self) -> None:
        self.stderr.clear()
        command = [sys.executable, "-m", self.module]
        out = self.stack.output
        proc = subprocess.Popen(
            command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.PIPE
        )  # fmt: skip
        self.stack.procs[self.name] = proc
        assert proc.stderr is not None
        sink = sys.stderr.buffer if out is None else None if out == subprocess.DEVNULL else out
        threading.Thread(target=self._pump, args=(proc.stderr, sink), daemon=True).start()

    def _pump(self, source: IO[bytes], sink: Any) -> None:
        for line in source:
            self.stderr.append(line.decode(errors="replace"))
            if sink is not None:
                try:
                    sink.write(line)
                    sink.flush()
                except (OSError, ValueError):  # the output was closed under us: keep the tail anyway
                    sink = None
        source.close()

    def exit_code(self) -> int | None:
        return self.stack.procs[self.name].poll()

    def healthy(self) -> bool:
        if self.name == "edge":
            return _http_answers(f"{self.stack.edge_url}/health")
        if self.name == SINGLE:  # every server of the process, then its edge
            serving = all(_grpc_serving(self.stack.address(name)) for name in self.stack.services)
            return serving and _http_answers(f"{self.stack.edge_url}/health")
        return _grpc_serving(self.stack.address(self.name))

    def stop(self) -> None:
        proc = self.stack.procs[self.name]
        proc.kill()
        proc.wait()

    def last_error(self) -> str:
        time.sleep(0.05)  # the pump thread may still hold the dying process's last lines
        captured = supervision.last_error("".join(self.stderr))
        if captured:
            return captured
        try:
            return supervision.last_error(self.log_path.read_text(errors="replace")[-65536:])
        except OSError:
            return ""


def _settings(env: dict[str, str], name: str):
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings(name)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _grpc_serving(address: str) -> bool:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            return response.status == health_pb2.HealthCheckResponse.SERVING

    try:
        return asyncio.run(check())
    except grpc.aio.AioRpcError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _health_document(url: str) -> dict[str, Any]:
    """The edge's /health document whether it answers 200 or 503; {} when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read()) if exc.code == 503 else {}
    except (OSError, ValueError):
        return {}


def _http_answers(url: str) -> bool:
    """The edge itself is up: /health answers 200, or 503 while a backend is down."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 503
    except OSError:
        return False


def main() -> int:
    """Runs until Ctrl-C; exits 1 if a process was given up on meanwhile (or at once if all were), else 0."""
    env = dict(os.environ)
    env.setdefault("LAUNCHPAD_TOPOLOGY", "single")  # a laptop: one process; LAUNCHPAD_TOPOLOGY=split for nine
    stack = Stack(env, supervise=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Both explicitly: a shell that starts us in the background makes us inherit SIGINT as ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
    except (TimeoutError, RuntimeError) as exc:
        print(f"launchpad: {exc}", file=sys.stderr)
        return 1
    _print_ready(stack)
    everyone = len(stack.processes())
    try:
        while not stopping and len(stack.failed()) < everyone:
            time.sleep(0.5)
    finally:
        print("launchpad: stopping...", file=sys.stderr)
        failed = stack.failed()
        stack.stop()
    if failed:
        print(f"launchpad: given up on: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _print_ready(stack: Stack) -> None:
    settings = _settings(stack.env, "edge")
    failed = set(stack.failed())
    edge = "   FAILED (see above)" if failed & {"edge", SINGLE} else ""
    where = "one process" if stack.topology == "single" else "one process per service"
    lines = [
        f"Launchpad is up ({stack.topology} topology: {where}). Edge: {stack.edge_url}"
        f"  (docs {stack.edge_url}/docs, health {stack.edge_url}/health){edge}"
    ]
    for name in stack.services:
        address = stack.address(name)
        port = int(address.rsplit(":", 1)[1])
        state = "   FAILED (see above)" if failed & {name, SINGLE} else ""
        lines.append(f"  {name:<9} gRPC {address}   metrics http://127.0.0.1:{port + 1000}/metrics{state}")
    password_file = settings.process.data_dir / "auth" / "initial-admin-password"
    if password_file.exists():
        lines.append(f"  first admin: user 'admin', password in {password_file}")
    lines.append(f"  logs: {settings.process.log_dir}/<service>.log   audit: {settings.process.audit_path}")
    lines.append('  a process that exits is restarted (state in /health "supervision")')
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
