"""`make bench`, realtime part: WebSocket fan-out through the edge against a bare `websockets` broadcast server.

One client harness drives both targets: N subscribers on one topic, one publisher WebSocket sending publish
frames at a steady rate, each message carrying its send time (time.time()); every receiver records
publish-to-receive latency. The bare server speaks the same frames (subscribe -> subscribed, publish ->
message to every subscriber via websockets.broadcast, plus published to the publisher), so the harness is the
same code for both. The clients run in this process on uvloop; the bare server runs in its own process, like
the edge. Both topologies run one after the other, each stack started with auth and realtime as its backends
(split: those two processes and the edge; single: the one process, which serves every built service), and
the bare server is driven right after each edge run so each pair shares the machine's load. Targets, per
topology: edge delivered rate >= 0.9x the bare server's, edge p99 <= 1.5x the bare server's p99.

Env: BENCH_WS_CLIENTS (1000), BENCH_SECONDS (10), BENCH_WS_RATE (messages/s published, 50).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import uvloop
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from services.launcher import ROOT, Stack
from tests.bench import login, stack_env

BASE_PORT = 18500
BASE_PORTS = {"split": BASE_PORT, "single": BASE_PORT + 200}  # no port of one stack lingers into the next
BARE_PORT = BASE_PORT + 90
TOPOLOGIES = ("split", "single")
CLIENTS = int(os.environ.get("BENCH_WS_CLIENTS", "1000"))
DURATION_S = float(os.environ.get("BENCH_SECONDS", "10"))
RATE = float(os.environ.get("BENCH_WS_RATE", "50"))
TOPIC = "bench.fanout"
CONNECT_PARALLEL = 50  # connection attempts in flight at once
DRAIN_S = 3.0  # after the last publish, how long receivers may still catch up


@dataclass
class Run:
    name: str
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_receive: float = 0.0
    dropped: int = 0  # subscribers closed or refused by the server during the run

    @property
    def delivered(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        window = self.last_receive - self.first_send
        return self.delivered / window if window > 0 else 0.0

    def pct(self, p: int) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[p - 1]


# ---------------------------------------------------------------- the client harness


async def _until(ws: ClientConnection, kind: str, timeout: float = 30.0) -> dict:
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame.get("type") == kind:
            return frame
        if frame.get("type") == "error":
            raise RuntimeError(f"error frame while waiting for {kind!r}: {frame}")


async def _subscriber(url: str, gate: asyncio.Semaphore, ready: list[ClientConnection]) -> ClientConnection:
    async with gate:
        ws = await connect(url, max_queue=None, open_timeout=60, ping_interval=None)
        await ws.send(orjson.dumps({"subscribe": TOPIC}).decode())
        await _until(ws, "subscribed")
    ready.append(ws)
    return ws


async def _receive(ws: ClientConnection, run: Run) -> None:
    """Records the latency of every message frame on the topic until the socket closes or is cancelled."""
    try:
        async for raw in ws:
            now = time.time()
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "message" and frame.get("topic") == TOPIC and not frame.get("synthetic"):
                run.latencies_ms.append((now - frame["message"]["ts"]) * 1e3)
                run.last_receive = now
            elif kind == "error":
                run.dropped += 1  # e.g. the slow-client rule (RESOURCE_EXHAUSTED, then close 1013)
                return
    except websockets.ConnectionClosed:
        run.dropped += 1


async def _publish(ws: ClientConnection, run: Run, seconds: float, rate: float) -> None:
    """Steady rate against a fixed schedule (no drift), replies drained by a side task."""
    drain = asyncio.ensure_future(_discard(ws))
    interval = 1.0 / rate
    start = time.perf_counter()
    run.first_send = time.time()
    count = int(seconds * rate)
    for seq in range(count):
        delay = start + seq * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        message = {"ts": time.time(), "seq": seq}
        await ws.send(orjson.dumps({"publish": {"topic": TOPIC, "msg": message}}).decode())
        run.sent += 1
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)


async def _discard(ws: ClientConnection) -> None:
    async for raw in ws:
        frame = orjson.loads(raw)
        if frame.get("type") == "error":
            raise RuntimeError(f"publish refused: {frame}")


async def drive(name: str, url: str, clients: int, seconds: float, rate: float) -> Run:
    """Connects `clients` subscribers and one publisher to `url`, publishes for `seconds`, measures."""
    run = Run(name)
    gate = asyncio.Semaphore(CONNECT_PARALLEL)
    subs: list[ClientConnection] = []
    started = time.perf_counter()
    try:
        await asyncio.gather(*(_subscriber(url, gate, subs) for _ in range(clients)))
        print(f"  {name}: {clients} subscribers in {time.perf_counter() - started:.1f}s", flush=True)
        receivers = [asyncio.ensure_future(_receive(ws, run)) for ws in subs]
        async with connect(url, max_queue=None, ping_interval=None) as pub:
            await _publish(pub, run, seconds, rate)
            expected = run.sent * clients
            deadline = time.monotonic() + DRAIN_S
            while run.delivered < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
    finally:
        await asyncio.gather(*(ws.close() for ws in subs), return_exceptions=True)
    return run


# ---------------------------------------------------------------- the bare server (its own process)


async def _bare_server(port: int) -> None:
    subscribers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                if "subscribe" in frame:
                    subscribers.add(ws)
                    await ws.send(orjson.dumps({"type": "subscribed", "topic": frame["subscribe"]}).decode())
                elif "publish" in frame:
                    pub = frame["publish"]
                    out = {"type": "message", "topic": pub["topic"], "message": pub["msg"]}
                    websockets.broadcast(subscribers, orjson.dumps(out).decode())
                    await ws.send(orjson.dumps({"type": "published", "topic": pub["topic"]}).decode())
        finally:
            subscribers.discard(ws)

    # compression=None: the edge runs without permessage-deflate too (edge/__main__.py), so both servers
    # send the same bytes.
    async with serve(handler, "127.0.0.1", port, ping_interval=None, max_queue=None, compression=None):
        await asyncio.Future()


def _start_bare() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench_realtime", "--bare-server", str(BARE_PORT)], cwd=ROOT
    )
    for _ in range(100):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", BARE_PORT), timeout=1).close()
            return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("bare websockets server did not start")


# ---------------------------------------------------------------- the stack


def _raise_fd_limit(needed: int) -> None:
    """Each subscriber is a socket here and one in the server (the edge inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(max(needed, soft), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        print(f"  warning: open-file limit {want} < {needed} needed", flush=True)


def main() -> int:
    _raise_fd_limit(CLIENTS * 2 + 512)
    print(f"\nrealtime fan-out: {CLIENTS} subscribers, {RATE:g} msg/s for {DURATION_S:g}s", flush=True)
    bare = _start_bare()
    try:
        pairs = [_pair(topology) for topology in TOPOLOGIES]
    finally:
        bare.terminate()
        bare.wait()
    return _report(pairs)


def _pair(topology: str) -> tuple[Run, Run]:
    """The edge of a fresh stack of this topology, then the bare server, with the same harness."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"launchpad-bench-rt-{topology}-"))
    output = open(data_dir / "stack.out", "wb")  # noqa: SIM115 -- one line per RPC: not on the terminal
    env = stack_env(data_dir, BASE_PORTS[topology], topology)
    stack = Stack(env, services=["auth", "realtime"], output=output)
    stack.start()
    try:
        token = login(stack.edge_url)
        edge_url = stack.edge_url.replace("http://", "ws://") + f"/ws/realtime?token={token}"
        bare_url = f"ws://127.0.0.1:{BARE_PORT}/"
        return uvloop.run(_both(f"edge ({topology})", edge_url, bare_url))
    finally:
        stack.stop()
        output.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _both(name: str, edge_url: str, bare_url: str) -> tuple[Run, Run]:
    edge = await drive(name, edge_url, CLIENTS, DURATION_S, RATE)
    await asyncio.sleep(1.0)  # let the edge's closes settle before the bare run shares the CPUs
    bare = await drive("bare websockets", bare_url, CLIENTS, DURATION_S, RATE)
    return edge, bare


def _report(pairs: list[tuple[Run, Run]]) -> int:
    print(
        f"\nrealtime fan-out, {CLIENTS} subscribers on one topic, {RATE:g} msg/s published for {DURATION_S:g}s"
    )
    results: list[bool] = []
    for edge, bare in pairs:
        for r in (edge, bare):
            expected = r.sent * CLIENTS
            share = r.delivered / expected if expected else 0.0
            print(
                f"  {r.name:<18} {r.rate:9.0f} msg/s delivered   p50 {r.pct(50):7.2f} ms"
                f"   p99 {r.pct(99):7.2f} ms"
                f"   ({r.delivered}/{expected} = {share:.1%} delivered, {r.dropped} subscribers dropped)"
            )
        ratio = edge.rate / bare.rate if bare.rate else 0.0
        p99_ratio = edge.pct(99) / bare.pct(99) if bare.pct(99) > 0 else float("inf")
        checks = [
            ("edge / bare delivered rate", ratio, ">= 0.90", ratio >= 0.9),
            ("edge p99 / bare p99", p99_ratio, "<= 1.50", p99_ratio <= 1.5),
        ]
        print(f"checks ({edge.name}):")
        for label, value, target, ok in checks:
            print(f"  {label:<36} {value:6.2f}  (target {target})  {'ok' if ok else 'MISSED'}")
        results += [ok for *_, ok in checks]
    return 0 if all(results) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        uvloop.run(_bare_server(int(sys.argv[2])))
    else:
        sys.exit(main())
