"""A real browser as the Launchpad UI: headless Debian Chromium, driven by Playwright, loads a page served
from another origin, which logs in through the edge, runs `SELECT 1` and receives a realtime message over
the WebSocket. Proves CORS (with its preflight: JSON bodies and the Authorization header need one), exposed
headers and WebSocket auth for a browser; and that a page from an origin not configured is refused.

Ports: edge 36501, pages 36601-36602; the services' gRPC on 35511-35515 so that their /metrics
(gRPC port + 1000) stays inside 36000-36999 too.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.launcher import Stack
from tests.support import live_required

CHROMIUM = Path("/usr/bin/chromium")
# The flags: without the background-networking ones Chromium keeps dialling out into a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "browser-pw-1"
# gRPC ports 35511.. put each service's /metrics (gRPC port + 1000) on 36511..; edge and pages on 365xx/366xx.
STACK_BASE = 35500
EDGE_PORT = 36501
ALLOWED_PAGE_PORT = 36601  # the UI's origin, in LAUNCHPAD_CORS_ORIGINS
FOREIGN_PAGE_PORT = 36602  # another origin, not configured
SERVICES = ["data", "auth", "realtime"]
TOPIC = "browser-ui"
WAIT_MS = 30_000  # upper bound of a wait for the page, not a timing assertion

# The UI: a form, fetch() to the edge, a WebSocket; every outcome goes into the DOM for the test to read.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Launchpad browser check</title></head>
<body>
<form id="login"><input id="username"> <input id="password" type="password">
  <input id="marker"> <button id="run" type="submit">Run</button></form>
<dl>
  <dt>login</dt><dd id="login-status"></dd>
  <dt>query</dt><dd id="query-status"></dd><dd id="query-rows"></dd><dd id="query-request-id"></dd>
  <dt>realtime</dt><dd id="ws-state"></dd><dd id="ws-message"></dd>
  <dt>error</dt><dd id="error"></dd>
</dl>
<script>
const edge = new URLSearchParams(location.search).get("edge");
const show = (id, value) => { document.getElementById(id).textContent = value; };

async function post(path, body, headers) {
  return fetch(edge + path, {
    method: "POST",
    headers: {"content-type": "application/json", ...headers},
    body: JSON.stringify(body),
  });
}

async function run() {
  const marker = document.getElementById("marker").value;
  const login = await post("/api/auth/login", {
    username: document.getElementById("username").value,
    password: document.getElementById("password").value,
  }, {"x-request-id": marker + "-login"});
  show("login-status", String(login.status));
  const token = (await login.json()).token;

  const query = await post("/api/data/query", {sql: "SELECT 1"},
                           {"authorization": "Bearer " + token, "x-request-id": marker + "-query"});
  show("query-status", String(query.status));
  show("query-request-id", query.headers.get("x-request-id") || "(not exposed)");
  show("query-rows", JSON.stringify((await query.json()).rows));

  const ws = new WebSocket(edge.replace(/^http/, "ws") + "/ws/realtime?token=" + encodeURIComponent(token));
  ws.onopen = () => { show("ws-state", "open"); ws.send(JSON.stringify({subscribe: "%(topic)s"})); };
  ws.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "subscribed") show("ws-state", "subscribed");
    if (frame.type === "error") show("error", "ws: " + JSON.stringify(frame.error));
    if (frame.type === "message" && frame.topic === "%(topic)s") show("ws-message", JSON.stringify(frame.message));
  };
  ws.onclose = (event) => show("ws-state", "closed " + event.code);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  run().catch((err) => show("error", String(err)));
});
</script>
</body></html>
""" % {"topic": TOPIC}  # noqa: UP031 -- the page's JS is full of braces


def need_chromium() -> None:
    """Skips without Debian's Chromium or Playwright; fails instead under LAUNCHPAD_REQUIRE_LIVE=1."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        if live_required():
            pytest.fail(f"{' and '.join(missing)} missing but LAUNCHPAD_REQUIRE_LIVE=1")
        pytest.skip(f"{' and '.join(missing)} missing")


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows stderr of failing tests only, and these lines say nothing useful


@pytest.fixture(scope="module")
def pages() -> Iterator[dict[str, str]]:
    """The UI page served from two origins: the configured one and a foreign one."""
    servers = {
        name: http.server.ThreadingHTTPServer(("127.0.0.1", port), _PageHandler)
        for name, port in (("allowed", ALLOWED_PAGE_PORT), ("foreign", FOREIGN_PAGE_PORT))
    }
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    yield {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need_chromium()
    data_dir = tmp_path_factory.mktemp("browser-stack")
    live = ("SIMULATION_MODE", "POSTGRES_DSN", "REDIS_URL", "KAFKA_URL", "MINIO_ENDPOINT", "PROM_URL")
    env = {k: v for k, v in os.environ.items() if k not in live}
    env.update(
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
        LAUNCHPAD_CORS_ORIGINS=f"http://127.0.0.1:{ALLOWED_PAGE_PORT}",
        LAUNCHPAD_EDGE_PORT=str(EDGE_PORT),
        LAUNCHPAD_PUBLIC_URL=f"http://127.0.0.1:{EDGE_PORT}",
        **{f"LAUNCHPAD_{name.upper()}_PORT": str(STACK_BASE + port) for name, port in
           (("data", 11), ("auth", 12), ("realtime", 15))},
    )  # fmt: skip
    running = Stack(env, services=SERVICES)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with a fresh, empty profile (user data dir) for this module."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield context
        context.close()


def edge_preflights(stack: Stack) -> dict[int, float]:
    """OPTIONS answers the edge counted, by status: CORS answers preflights before any route matches."""
    text = httpx.get(f"{stack.edge_url}/metrics", timeout=15).text
    pattern = re.compile(r"^launchpad_edge_http_requests_total\{([^}]*)\} (\S+)$", re.MULTILINE)
    counts: dict[int, float] = {}
    for labels, value in pattern.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("method") == "OPTIONS":
            status = int(fields["status"])
            counts[status] = counts.get(status, 0.0) + float(value)
    return counts


def submit(page: Any, origin: str, stack: Stack, marker: str) -> None:
    page.goto(f"{origin}/?edge={stack.edge_url}")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.fill("#marker", marker)
    page.click("#run")


def text(page: Any, selector: str) -> str:
    return page.text_content(selector) or ""


def test_ui_from_the_configured_origin_logs_in_queries_and_receives_realtime(
    stack: Stack, pages: dict[str, str], browser: Any
) -> None:
    before = edge_preflights(stack)
    marker = f"browser-{uuid.uuid4().hex[:12]}"
    page = browser.new_page()
    submit(page, pages["allowed"], stack, marker)
    page.wait_for_function(
        "['subscribed', 'closed'].some(s => document.getElementById('ws-state').textContent.startsWith(s))"
        " || document.getElementById('error').textContent !== ''",
        timeout=WAIT_MS,
    )
    assert text(page, "#error") == ""
    assert text(page, "#ws-state") == "subscribed"
    assert text(page, "#login-status") == "200"
    assert text(page, "#query-status") == "200"
    assert orjson.loads(text(page, "#query-rows")) == [[1]]
    # The page's own x-request-id went through the preflight and came back readable (an exposed header).
    assert text(page, "#query-request-id") == f"{marker}-query"

    # A server publishes; the browser's WebSocket, authenticated by the token in its URL, receives it.
    with httpx.Client(base_url=stack.edge_url, timeout=15) as http:
        token = http.post("/api/auth/login", json={"username": "admin", "password": PASSWORD}).json()["token"]
        published = http.post(
            "/api/realtime/publish",
            json={"topic": TOPIC, "msg": {"greeting": marker, "n": 7}},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert published.status_code == 200, published.text
    page.wait_for_function(
        "document.getElementById('ws-message').textContent !== ''"
        " || document.getElementById('error').textContent !== ''",
        timeout=WAIT_MS,
    )
    assert text(page, "#error") == ""
    assert orjson.loads(text(page, "#ws-message")) == {"greeting": marker, "n": 7}

    # Both POSTs needed a preflight (JSON body; Authorization), and the edge allowed them.
    after = edge_preflights(stack)
    assert after.get(200, 0.0) - before.get(200, 0.0) >= 2, (before, after)
    audit = (Path(stack.env["LAUNCHPAD_DATA_DIR"]) / "audit.log").read_text()
    assert f'"request_id":"{marker}-login"' in audit and f'"request_id":"{marker}-query"' in audit
    page.close()


def test_ui_from_another_origin_is_refused_by_cors(stack: Stack, pages: dict[str, str], browser: Any) -> None:
    before = edge_preflights(stack)
    marker = f"foreign-{uuid.uuid4().hex[:12]}"
    page = browser.new_page()
    submit(page, pages["foreign"], stack, marker)
    page.wait_for_function("document.getElementById('error').textContent !== ''", timeout=WAIT_MS)
    assert text(page, "#error") == "TypeError: Failed to fetch"
    assert text(page, "#login-status") == ""  # the script never saw an answer
    # The edge refused the preflight, so the browser never sent the login itself.
    after = edge_preflights(stack)
    assert after.get(400, 0.0) - before.get(400, 0.0) >= 1, (before, after)
    audit = (Path(stack.env["LAUNCHPAD_DATA_DIR"]) / "audit.log").read_text()
    assert f"{marker}-login" not in audit
    page.close()


def test_websocket_with_a_forged_token_is_refused(stack: Stack, pages: dict[str, str], browser: Any) -> None:
    """WebSocket auth as a browser meets it: the token rides in the URL (browsers cannot set headers on a
    WebSocket); a forged one gets an UNAUTHENTICATED error frame and close 1008, never a subscription."""
    page = browser.new_page()
    page.goto(f"{pages['allowed']}/?edge={stack.edge_url}")
    outcome = page.evaluate(
        """([url, topic]) => new Promise((resolve) => {
            const frames = [];
            const ws = new WebSocket(url);
            ws.onopen = () => ws.send(JSON.stringify({subscribe: topic}));
            ws.onmessage = (event) => frames.push(JSON.parse(event.data));
            ws.onclose = (event) => resolve({code: event.code, frames});
            setTimeout(() => resolve({code: "no close within the wait", frames}), WAIT_MS);
        })""".replace("WAIT_MS", str(WAIT_MS)),
        [stack.edge_url.replace("http://", "ws://") + "/ws/realtime?token=forged.token.value", TOPIC],
    )
    assert outcome["code"] == 1008, outcome
    assert [(f["type"], f["error"]["code"]) for f in outcome["frames"]] == [("error", "UNAUTHENTICATED")]
    page.close()
