"""`make report`: writes reports/F.backend_wiring_summary.md as the seed specifies (Phase F, "Report content").

Branch and commit, which environment variables are present (names only), the test counts parsed from the log
`make test` saved, the real responses of a stack started for the report on its own ports (embedded defaults,
or the live servers the environment names), the files of the system, each dependency's mode with its BLOCKED
items and their remediation, and the test log.

Secrets never reach the file: tokens, signatures and passwords are redacted where they are produced, every
answer is scrubbed before it is cut to length, and the finished text is scrubbed once more (see `Scrubber`):
every secret-looking variable's value (also JSON-escaped and URL-quoted), URL signature parameters and JWTs.
The stack's own output goes to a file (--stack-log, reports/logs/F.report_stack.log), not to the terminal.

The admin logs in with LAUNCHPAD_ADMIN_PASSWORD when set. Otherwise the report makes up a password; on a live
PostgreSQL without an admin the stack creates `admin` with it, and the report prints it once to stderr (a live
database that already has an admin needs LAUNCHPAD_ADMIN_PASSWORD). Against live servers a run also leaves an
empty `report-...` bucket, a WPK artifact with its deployment and their audit entries; the user and the sample
table it creates are deleted again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import httpx

from services.core.config import SERVICES
from services.launcher import Stack

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "reports" / "F.backend_wiring_summary.md"
DEFAULT_LOG = ROOT / "reports" / "logs" / "F.backend_tests.log"
DEFAULT_STACK_LOG = ROOT / "reports" / "logs" / "F.report_stack.log"  # the report's stack's stdout/stderr
# Edge base+1, services base+11..base+18, their /metrics base+1011..: beside `make up` and the test stacks.
DEFAULT_BASE_PORT = 37000
LOG_TAIL_LINES = 150
OUTPUT_LIMIT = 3000  # characters of one response shown in the report
STACK_LOG_LINES = 40  # of the stack's output, quoted when it did not start
PROMETHEUS_RESULT_TYPES = ("vector", "matrix", "scalar", "string")

# The seed's "Environment (required)" list, plus the variables this implementation reads for the same things.
ENV_VARS: tuple[tuple[str, str], ...] = (
    ("POSTGRES_DSN", "PostgreSQL: tenant SQL and platform tables"),
    ("VAULT_ADDR", "Vault / OpenBao transit: WPK signing"),
    ("VAULT_TOKEN", "Vault token (with VAULT_ADDR)"),
    ("MINIO_ENDPOINT", "S3 / MinIO object storage"),
    ("MINIO_ACCESS_KEY", "S3 access key"),
    ("MINIO_SECRET_KEY", "S3 secret key"),
    ("PROM_URL", "Prometheus for metric queries"),
    ("KAFKA_URL", "realtime broker (KAFKA_URL or REDIS_URL)"),
    ("REDIS_URL", "realtime broker, shared edge rate limits"),
    ("OPENAI_KEY", "optional: OpenAI-compatible LLM for the AI proxy"),
    ("OPENAI_BASE_URL", "optional: the LLM endpoint"),
    ("COSIGN_KEY_PATH", "optional: cosign key file for WPK signing"),
    ("LOKI_URL", "optional: Loki for log queries"),
    ("RUNTIME_AGENT_URL", "optional: runtime agent deploys call"),
    ("SIMULATION_MODE", "true / false; unset = auto"),
    ("NEXT_PUBLIC_API_BASE_URL", "the UI's gateway URL (http://localhost:8001)"),
    ("GIT_AUTHOR_NAME", "commit author"),
    ("GIT_AUTHOR_EMAIL", "commit author"),
)
# Set by the report for its own stack; the caller's values would move it onto other ports or folders.
_STACK_OWNED = re.compile(r"LAUNCHPAD_(\w+_PORT|\w+_ADDR|DATA_DIR|LOG_DIR|PUBLIC_URL|BACKENDS)")
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|DSN|CREDENTIAL", re.IGNORECASE)
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")  # an unsigned one (empty third part) too
_URL_SIGNATURE_PARAMS = {"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token"}
# A signature parameter anywhere in a text: after ? or &, and after &amp; in an XML (S3) error body.
_SIGNED_PARAM = re.compile(
    r"((?<![\w-])(?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|token)=)"
    r"[^&\s\"'<>`\\]+",
    re.IGNORECASE,
)
# Values too plain to scrub everywhere: LAUNCHPAD_TOKEN_TTL_S=3600 must not erase every "3600" in the report.
_MIN_SECRET = 6
_COMMON_WORDS = frozenset({"enabled", "disabled", "default", "localhost", "postgres", "secret", "password"})
_TREE_COLLAPSED = ("generated", "third_party")  # shown as a file count: machine-made or vendored
REDACTED = "<redacted>"


# --- secrets ---------------------------------------------------------------------------------------------


class Scrubber:
    """Removes secrets from text: every value of a secret-looking variable (KEY, SECRET, TOKEN, PASSWORD,
    DSN..., any case) and the password part of any URL or DSN in the environment, each as written,
    JSON-escaped and URL-quoted; the value of every URL signature parameter (sig=, X-Amz-Signature=,
    token=...); JWTs. Values shorter than 6 characters, numbers and common words stay (see _COMMON_WORDS)."""

    def __init__(self, env: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        values = set(extra)
        for name, value in env.items():
            if _SECRET_NAME.search(name) and not name.upper().endswith("_PATH"):
                values.add(value)
            values.update(_embedded_passwords(value))
        forms = {form for value in values if _worth_scrubbing(value) for form in _written_forms(value)}
        # Longest first, so a DSN goes whole before its password.
        self.values = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        text = _SIGNED_PARAM.sub(rf"\1{REDACTED}", text)
        return _JWT.sub("<redacted JWT>", text)


def _worth_scrubbing(value: str) -> bool:
    return (
        len(value) >= _MIN_SECRET
        and not re.fullmatch(r"[\d.]+", value)
        and value.lower() not in _COMMON_WORDS
    )


def _written_forms(value: str) -> set[str]:
    """The value as written, inside a JSON string (ASCII-escaped or not) and URL-quoted."""
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
    }


def _embedded_passwords(value: str) -> set[str]:
    """user:password@ in a URL, password=... in a key=value DSN."""
    found = set(re.findall(r"(?i)\bpassword\s*=\s*'?([^\s']+)", value))
    if "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            found.add(password)
    return found


def redact_url(url: str) -> str:
    """A signed URL with its signature (and S3 credential) replaced; the rest stays readable."""
    parts = urlsplit(url)
    query = [
        (k, REDACTED if k.lower() in _URL_SIGNATURE_PARAMS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="<>/")))


def redact(value: Any) -> Any:
    """A response body with tokens and signed URLs redacted (the Scrubber still runs over the whole file)."""
    if isinstance(value, dict):
        return {k: REDACTED if k in ("token", "password") else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and value.startswith(("http://", "https://")) and "?" in value:
        return redact_url(value)
    return value


# --- branch, environment, tests, files -------------------------------------------------------------------


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def section_git() -> list[str]:
    changes = git("status", "--porcelain")
    return [
        "## Branch and commit",
        "",
        f"- branch: `{git('rev-parse', '--abbrev-ref', 'HEAD') or 'unknown'}`",
        f"- commit: `{git('rev-parse', 'HEAD') or 'unknown'}` {git('log', '-1', '--format=%s')}",
        f"- working tree: {'clean' if not changes else f'{len(changes.splitlines())} uncommitted changes'}",
    ]


def section_env(env: dict[str, str]) -> list[str]:
    lines = ["## Environment variables", "", "Names only; values are never written here.", ""]
    lines += ["| variable | | used for |", "|---|---|---|"]
    for name, purpose in ENV_VARS:
        lines.append(f"| `{name}` | {'present' if env.get(name, '').strip() else 'missing'} | {purpose} |")
    return lines


@dataclass
class TestSummary:
    counts: dict[str, int] = field(default_factory=dict)
    summary_line: str = ""
    problems: list[str] = field(default_factory=list)  # FAILED / ERROR lines of pytest's short summary
    skips: list[str] = field(default_factory=list)  # SKIPPED [n] ...: reason (with -rs)


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)\b")


def parse_test_log(text: str) -> TestSummary:
    """pytest's final line ("3 failed, 120 passed, 4 skipped in 180.2s") and its short summary lines."""
    summary = TestSummary()
    for line in text.splitlines():
        stripped = line.strip("= ").strip()
        if _COUNT.search(stripped) and re.search(r"\bin [\d.]+s\b", stripped):
            summary.summary_line = stripped
            summary.counts = {}
            for count, kind in _COUNT.findall(stripped):
                key = {"error": "errors", "warning": "warnings"}.get(kind, kind)
                summary.counts[key] = int(count)
        elif line.startswith(("FAILED ", "ERROR ")):
            summary.problems.append(line)
        elif line.startswith("SKIPPED "):
            summary.skips.append(line)
    return summary


def section_tests(log: Path) -> list[str]:
    lines = ["## Tests", ""]
    if not log.is_file():
        return [
            *lines,
            f"No test log at `{_shown(log)}`: run `make test` first (it saves pytest's output there).",
        ]
    summary = parse_test_log(log.read_text(errors="replace"))
    stamp = datetime.fromtimestamp(log.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"From `{_shown(log)}` (written by `make test`, {stamp}).")
    if not summary.summary_line:
        return [*lines, "", "The log has no pytest summary line: the run did not finish."]
    kinds = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed", "deselected")
    lines += ["", "| " + " | ".join(kinds) + " |", "|" + "---|" * len(kinds)]
    lines.append("| " + " | ".join(str(summary.counts.get(k, 0)) for k in kinds) + " |")
    lines += ["", f"pytest: `{summary.summary_line}`"]
    failed = summary.counts.get("failed", 0) + summary.counts.get("errors", 0)
    lines += ["", f"Result: **{'FAIL' if failed else 'PASS'}**."]
    if summary.problems:
        lines += ["", "Failures:", "", *(f"- `{p}`" for p in summary.problems)]
    if summary.skips:
        lines += ["", "Skipped:", "", *(f"- `{s}`" for s in summary.skips)]
    return lines


def section_tree() -> list[str]:
    files = git("ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    tree: dict[str, Any] = {}
    for path in sorted(files):
        node = tree
        *folders, name = path.split("/")
        for folder in folders:
            node = node.setdefault(folder + "/", {})
        node[name] = None
    lines = [
        "## Files and folders",
        "",
        "Tracked and new files (`git ls-files`), generated code collapsed.",
        "",
    ]
    return [*lines, "```", "./", *_render(tree, ""), "```"]


def _render(node: dict[str, Any], indent: str) -> Iterator[str]:
    names = sorted(node, key=lambda n: (not n.endswith("/"), n))
    for i, name in enumerate(names):
        last = i == len(names) - 1
        child = node[name]
        label = name
        if child is not None and name.rstrip("/") in _TREE_COLLAPSED:
            label, child = f"{name}  ({_count(child)} files)", None
        yield f"{indent}{'└── ' if last else '├── '}{label}"
        if child is not None:
            yield from _render(child, indent + ("    " if last else "│   "))


def _count(node: dict[str, Any]) -> int:
    return sum(1 if child is None else _count(child) for child in node.values())


def section_log(log: Path) -> list[str]:
    lines = ["## Test log", ""]
    if not log.is_file():
        return [*lines, "(none yet)"]
    shown, total = _tail(log, LOG_TAIL_LINES)
    where = "whole" if len(shown) == total else f"last {len(shown)} of {total} lines"
    return [*lines, f"`{_shown(log)}` ({where}):", "", "```", *shown, "```"]


def _tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines of a file and how many it has (none when it does not exist)."""
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return text[-count:], len(text)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --- verification against a running stack ---------------------------------------------------------------


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

    def show(self, request: str, answer: Any, status: int | None = None, limit: int = OUTPUT_LIMIT) -> None:
        head = f"`{self.scrub(request)}`" + (f" -> {status}" if status is not None else "")
        body = self.scrub(answer if isinstance(answer, str) else to_json(redact(answer)))
        if len(body) > limit:
            body = body[:limit] + f"\n... ({len(body) - limit} more characters)"
        self.entries += [head, "", "```json" if not isinstance(answer, str) else "```", body, "```", ""]


class Verifier:
    """Calls the stack the way the README's curl examples do and records every answer."""

    def __init__(self, stack: Stack, password: str, scrub: Callable[[str], str]) -> None:
        self.stack = stack
        self.password = password
        self.scrub = scrub
        self.http = httpx.Client(base_url=stack.edge_url, timeout=60)
        self.token = ""
        self.steps: list[Step] = []
        self.health: dict[str, Any] = {}

    def call(
        self,
        step: Step,
        method: str,
        path: str,
        body: Any = None,
        *,
        shown: Any = None,
        check: bool = True,
        limit: int = OUTPUT_LIMIT,
    ) -> httpx.Response:
        """One request through the edge, recorded in `step`; a failed answer fails the step when `check`."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = self.http.request(method, path, json=body, headers=headers)
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text
        request = f"{method} {path}" + (
            f" {json.dumps(shown if shown is not None else body)}" if body else ""
        )
        step.show(request, answer, response.status_code, limit)
        step.ok = step.ok and (response.is_success or not check)
        return response

    def run(self, title: str, action: Callable[[Step], None], service: str = "") -> None:
        step = Step(title, service, scrub=self.scrub)
        self.steps.append(step)
        try:
            action(step)
        except Exception as exc:  # recorded in the report, which is what this run is for
            step.ok = False
            step.show("error", f"{type(exc).__name__}: {exc}")

    def all(self) -> None:
        self.run("Gateway health: GET /health", self.check_health)
        self.run("Login: POST /auth/login (token redacted)", self.login, "auth")
        if not self.token:
            return  # every other call needs the admin's token; the login step says why it failed
        self.run("SQL: SELECT 1", self.select_one, "data")
        self.run("Users: create, list, delete", self.users, "auth")
        self.run("Storage: signed URLs (signature redacted), upload then download", self.storage, "storage")
        self.run("WPK: pack, sign, deploy, audit entries", self.wpk, "deploy")
        self.run("Realtime: /ws/realtime subscribe and receive", self.realtime, "realtime")
        self.run("AI: SQL suggestion and question to SQL", self.ai, "ai")
        self.run("Logs: POST /api/logs/query", self.logs, "logs")
        self.run("Metrics: POST /api/metrics/query", self.metrics, "metrics")

    def check_health(self, step: Step) -> None:
        self.health = self.call(step, "GET", "/health", limit=20 * OUTPUT_LIMIT).json()  # shown whole

    def login(self, step: Step) -> None:
        body = {"username": "admin", "password": self.password}
        response = self.call(step, "POST", "/auth/login", body, shown={**body, "password": REDACTED})
        if response.is_success:
            self.token = response.json()["token"]
        elif response.status_code == 401:
            step.entries.append(
                "BLOCKED: the admin already exists with another password; set LAUNCHPAD_ADMIN_PASSWORD to it."
            )

    def select_one(self, step: Step) -> None:
        answer = self.call(step, "POST", "/api/data/query", {"sql": "SELECT 1"})
        step.ok = step.ok and answer.json().get("rows") == [[1]]

    def users(self, step: Step) -> None:
        name = f"report-{uuid.uuid4().hex[:6]}"
        created = {"username": name, "password": secrets.token_urlsafe(12), "roles": ["developer"]}
        self.call(step, "POST", "/api/users", created, shown={**created, "password": REDACTED})
        listed = self.http.get("/api/users", headers={"Authorization": f"Bearer {self.token}"})
        names = [u["username"] for u in listed.json().get("users", [])] if listed.is_success else []
        step.show("GET /api/users (usernames)", names, listed.status_code)
        step.ok = step.ok and name in names
        self.call(step, "DELETE", f"/api/users/{name}")  # the user goes again (what stays: module docstring)

    def storage(self, step: Step) -> None:
        bucket, data = f"report-{uuid.uuid4().hex[:6]}", b"launchpad wiring report\n"
        self.call(step, "POST", "/api/storage/buckets", {"name": bucket})
        put = self.call(
            step, "POST", "/api/storage/signed-url", {"path": f"{bucket}/hello.txt", "method": "PUT"}
        )
        # the headers the URL was signed with (S3: the owner and content type), as a client must send them
        uploaded = self.http.put(put.json()["url"], content=data, headers=put.json().get("headers", {}))
        step.show(
            f"PUT <signed URL> ({len(data)} bytes)", uploaded.text or "(empty body)", uploaded.status_code
        )
        get = self.call(
            step, "POST", "/api/storage/signed-url", {"path": f"{bucket}/hello.txt", "method": "GET"}
        )
        downloaded = self.http.get(get.json()["url"])
        step.show("GET <signed URL>", downloaded.text, downloaded.status_code)
        step.ok = step.ok and uploaded.is_success and downloaded.content == data
        self.call(step, "POST", "/api/storage/object/delete", {"path": f"{bucket}/hello.txt"})

    def wpk(self, step: Step) -> None:
        wpk = {"name": "report-sample", "version": "1.0.0", "steps": [{"name": "hello", "run": "echo hello"}]}
        packed = self.call(step, "POST", "/api/wpk/pack", {"wpk": wpk}).json()
        self.call(step, "POST", "/api/wpk/sign", {"artifact": packed["artifact_id"]})
        self.call(step, "POST", "/api/wpk/deploy", {"artifact_id": packed["artifact_id"]})
        audit = Path(self.stack.env["LAUNCHPAD_DATA_DIR"]) / "audit.log"
        events = [json.loads(line) for line in audit.read_text().splitlines() if packed["sha256"] in line]
        step.show(f"audit.log entries with sha256 {packed['sha256'][:12]}...", events)
        step.ok = step.ok and len(events) >= 3

    def realtime(self, step: Step) -> None:
        from websockets.sync.client import connect

        url = self.stack.edge_url.replace("http://", "ws://") + f"/ws/realtime?token={self.token}"
        topic = f"report.{uuid.uuid4().hex[:6]}"
        frames: list[Any] = []
        with connect(url, open_timeout=30) as ws:
            ws.send(json.dumps({"subscribe": "naksha.telemetry"}))
            frames.append(_next(ws, lambda f: f["type"] == "subscribed"))
            frames.append(_next(ws, lambda f: f["type"] == "message"))
            ws.send(json.dumps({"subscribe": topic}))
            frames.append(_next(ws, lambda f: f["type"] == "subscribed" and f["topic"] == topic))
            self.call(step, "POST", "/api/realtime/publish", {"topic": topic, "msg": {"hello": "report"}})
            frames.append(_next(ws, lambda f: f["type"] == "message" and f["topic"] == topic))
        step.show('WS /ws/realtime?token=<redacted>: {"subscribe": ...} then the frames received', frames)

    def ai(self, step: Step) -> None:
        # A sample table for the schema-aware assistant; only one this run created is dropped afterwards.
        table = "CREATE TABLE orders (id integer primary key, customer text, amount integer)"
        # An existing `orders` is fine (CREATE fails, nothing is dropped): the questions below are read-only.
        created = self.call(step, "POST", "/api/data/query", {"sql": table}, check=False).is_success
        if created:
            rows = "INSERT INTO orders VALUES (1, 'ada', 30), (2, 'bob', 12), (3, 'ada', 7)"
            self.call(step, "POST", "/api/data/query", {"sql": rows})
        try:
            self.call(
                step, "POST", "/api/ai/sql/suggest", {"context": "SELECT * FROM ord", "table": "orders"}
            )
            answer = self.call(step, "POST", "/api/ai/query", {"question": "how many orders are there?"})
            if answer.is_success and answer.json().get("valid"):
                self.call(step, "POST", "/api/data/query", {"sql": answer.json()["sql"]})
        finally:
            if created:
                self.call(step, "POST", "/api/data/query", {"sql": "DROP TABLE orders"})

    def logs(self, step: Step) -> None:
        answer = self.call(step, "POST", "/api/logs/query", {"query": '{service="auth"}', "limit": 3})
        step.ok = step.ok and isinstance(answer.json().get("entries"), list)

    def metrics(self, step: Step) -> None:
        live = any(d["name"] == "prometheus" and d["mode"] == "live" for d in _dependencies(self.health))
        query = (
            "up" if live else "sum(launchpad_rpc_requests_total)"
        )  # PROM_URL's Prometheus may not scrape us
        answer = self.call(step, "POST", "/api/metrics/query", {"query": query}).json()
        result_type = (answer.get("data") or {}).get("resultType")  # Prometheus's answer shape
        step.ok = step.ok and answer.get("status") == "success" and result_type in PROMETHEUS_RESULT_TYPES


def _next(ws: Any, wanted: Callable[[dict[str, Any]], bool], timeout_s: float = 30) -> dict[str, Any]:
    """The next wanted frame; an error frame fails the step (the exception is what it shows)."""
    deadline = time.monotonic() + timeout_s
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame.get("type") == "error":
            raise RuntimeError(f"error frame: {json.dumps(frame)}")
        if wanted(frame):
            return frame


def _dependencies(health: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for service, entry in health.get("services", {}).items():
        for dep in entry.get("dependencies", []):
            yield {**dep, "service": service}


def section_verification(
    verifier: Verifier | None, stack_error: str, ports: str, stack_log: Path
) -> list[str]:
    lines = ["## Verification outputs", ""]
    lines.append(
        f"The real answers of a stack started for this report ({ports}), called as the README's curl"
    )
    lines.append("examples call it. Tokens, passwords and URL signatures are redacted.")
    lines.append(f"The stack's own output is in `{_shown(stack_log)}`.")
    if stack_error:
        lines += ["", f"**The stack did not start:** `{stack_error}`"]
        # Quoted from a file no one scrubbed: build() scrubs the whole report, this part included.
        tail, _ = _tail(stack_log, STACK_LOG_LINES)
        return [*lines, "", "Its last lines:", "", "```", *tail, "```"] if tail else lines
    assert verifier is not None
    modes: dict[str, list[str]] = {}
    for dep in _dependencies(verifier.health):
        modes.setdefault(dep["service"], []).append(f"{dep['name']}: {dep['mode']}")
    lines += ["", "| step | result | served by (dependency modes) |", "|---|---|---|"]
    lines += [
        f"| {s.title} | {'ok' if s.ok else '**FAILED**'} | "
        + (
            f"{s.service} ({', '.join(modes.get(s.service, [])) or 'no dependencies'})"
            if s.service
            else "edge"
        )
        + " |"
        for s in verifier.steps
    ]
    for step in verifier.steps:
        lines += ["", f"### {step.title}", "", *step.entries]
    return lines


def section_dependencies(health: dict[str, Any]) -> list[str]:
    lines = ["## Dependencies: modes and BLOCKED items", ""]
    deps = list(_dependencies(health))
    if not deps:
        return [*lines, "No /health answer: see the verification section."]
    lines += [f"Gateway env: `{health.get('env', '?')}`, status `{health.get('status', '?')}`.", ""]
    lines += ["| service | dependency | mode | healthy | target |", "|---|---|---|---|---|"]
    lines += [
        f"| {d['service']} | {d['name']} | {d['mode']} | {'yes' if d['healthy'] else '**no**'} | "
        f"`{d.get('target') or '-'}` |"
        for d in deps
    ]
    blocked = [d for d in deps if d["mode"] != "live" or not d["healthy"]]
    lines += ["", "BLOCKED (not on a live server; the embedded default serves instead):", ""]
    for d in blocked:
        why = {"embedded": "not configured", "fallback": "configured but not answering at start-up"}
        reason = why.get(d["mode"], "not healthy")
        detail = f" ({d['detail']})" if d.get("detail") else ""
        lines.append(
            f"- **BLOCKED** {d['service']}/{d['name']}: {reason}{detail}. Remediation: {d['remediation']}."
        )
    if not blocked:
        lines.append("- none")
    if any(d["name"] == "signing" and d["mode"] != "live" for d in deps):
        lines.append(
            "- **BLOCKED** live deploys: the WPK signing key is the generated one, which deploy does not trust "
            "with SIMULATION_MODE=false. Remediation: VAULT_ADDR + VAULT_TOKEN (transit) or COSIGN_KEY_PATH."
        )
    return lines


# --- the whole report ------------------------------------------------------------------------------------


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


def verify(
    env: dict[str, str], base_port: int, password: str, scrub: Scrubber, output: IO[bytes]
) -> tuple[Verifier | None, str]:
    """Starts the stack in a throwaway data dir (its stdout/stderr to `output`), runs every step, stops it:
    (the verifier, why it did not start)."""
    if busy := [port for port in stack_ports(base_port) if _listening(port)]:
        # gRPC servers set SO_REUSEPORT: started anyway, the report would share ports with whatever runs there.
        return None, f"ports {busy} are in use: pick free ones with --base-port"
    with tempfile.TemporaryDirectory(prefix="launchpad-report-") as data_dir:
        stack = Stack(stack_env(env, base_port, Path(data_dir), password), output=output)
        try:
            stack.start(timeout_s=120)
        except (TimeoutError, RuntimeError) as exc:
            return None, str(exc)
        verifier = Verifier(stack, password, scrub)
        try:
            verifier.all()
            return verifier, ""
        finally:
            verifier.http.close()
            stack.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def build(log: Path, base_port: int, stack_log: Path) -> tuple[str, bool]:
    """The report's text and whether every verification step succeeded."""
    env = dict(os.environ)
    configured = env.get("LAUNCHPAD_ADMIN_PASSWORD", "").strip()
    password = configured or secrets.token_urlsafe(18)
    scrub = Scrubber(env, (password,))
    stack_log.parent.mkdir(parents=True, exist_ok=True)
    with stack_log.open("wb") as output:
        verifier, stack_error = verify(env, base_port, password, scrub, output)
    ports = f"edge {base_port + 1}, services {base_port + 11}-{base_port + 18}"
    health = verifier.health if verifier else {}
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = [
        [
            "# Phase F backend wiring summary",
            "",
            f"Written {stamp} by `make report` (`python -m services.report`).",
        ],
        section_git(),
        section_env(env),
        section_tests(log),
        section_verification(verifier, stack_error, ports, stack_log),
        section_tree(),
        section_dependencies(health),
        section_log(log),
    ]
    text = "\n\n".join("\n".join(section) for section in sections) + "\n"
    ok = verifier is not None and all(step.ok for step in verifier.steps) and bool(verifier.token)
    if verifier and verifier.token and not configured and _live_auth_database(health):
        # A made-up password logged in, so the stack created the admin just now, in a database that stays.
        print(
            f"services.report: created the first admin 'admin' in the live database (POSTGRES_DSN) with the "
            f"password {password} (shown only here; set LAUNCHPAD_ADMIN_PASSWORD to choose it)",
            file=sys.stderr,
        )
    return scrub(text), ok


def _live_auth_database(health: dict[str, Any]) -> bool:
    return any(
        d["service"] == "auth" and d["name"] == "sql" and d["mode"] == "live" for d in _dependencies(health)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the summary to write")
    parser.add_argument("--test-log", type=Path, default=DEFAULT_LOG, help="the log `make test` saved")
    parser.add_argument(
        "--base-port", type=int, default=DEFAULT_BASE_PORT, help="edge base+1, services base+11.."
    )
    parser.add_argument(
        "--stack-log", type=Path, default=DEFAULT_STACK_LOG, help="where the stack's own output goes"
    )
    args = parser.parse_args(argv)
    text, ok = build(args.test_log.resolve(), args.base_port, args.stack_log.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}" + ("" if ok else " (verification FAILED or did not run: see the report)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
