"""A tiny local HTTP server for adapter tests: fixed routes, every request recorded (path, query, headers)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

Route = Callable[[dict[str, str]], tuple[int, Any]]  # GET: query -> status, JSON body (or bytes)
PostRoute = Callable[[Any, dict[str, str]], tuple[int, Any]]  # POST: JSON body, headers -> status, body
_READY = ("/ready", "/-/ready")  # readiness paths answer without the delay


@dataclass
class FakeHttp:
    routes: dict[str, Route]
    delay_s: float = 0.0
    posts: dict[str, PostRoute] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def hits(self, path: str) -> int:
        return sum(1 for p, _, _ in self.requests if p == path)


@contextlib.contextmanager
def fake_http(
    routes: dict[str, Route], delay_s: float = 0.0, posts: dict[str, PostRoute] | None = None
) -> Iterator[FakeHttp]:
    fake = FakeHttp(routes, delay_s, posts or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, query = self._record()
            route = fake.routes.get(path)
            self._send(*(route(query) if route else (404, {"error": "no route"})))

        def do_POST(self) -> None:
            path, _ = self._record()
            body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")
            route = fake.posts.get(path)
            self._send(*(route(body, dict(self.headers)) if route else (404, {"error": "no route"})))

        def _record(self) -> tuple[str, dict[str, str]]:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            fake.requests.append((parts.path, query, dict(self.headers)))
            if parts.path not in _READY:
                time.sleep(fake.delay_s)
            return parts.path, query

        def _send(self, status: int, body: Any) -> None:
            payload = body if isinstance(body, bytes) else orjson.dumps(body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
