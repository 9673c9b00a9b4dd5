"""`make report` (python -m tools.report) end to end: it starts its own stack (ports 38501, 38511-38518;
/metrics on 39511-39518), calls it, and writes the summary. Known secret values sit in the environment and,
in every written form, in the test log the report quotes, beside a JWT and signed URLs; none of them, nor the
admin password, may reach the report, what the command prints on stdout, or its stderr.

The configured servers do not answer (a closed port), so the dependencies fall back to their embedded
defaults: the report must say BLOCKED, why, and the remediation, and every verification step still succeeds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from tests.integration.test_endpoints import STRIPPED_PREFIXES
from tests.support import free_address
from tools.report.caller import Caller, Session
from tools.report.scrub import REDACTED, Scrubber, redact_url
from tools.report.smoke import Step
from tools.report.sources import ROOT, parse_test_log
from tools.report.stack import stack_ports

BASE_PORT = 38500
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLW9mLWEtand0"
SIGNED_URLS = (
    "https://files.example/b/o.txt?sig=0123abcdef4567&exp=1700000000",
    "http://127.0.0.1:9000/b/o.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101"
    "&X-Amz-Signature=0123456789abcdef0123456789abcdef&X-Amz-SignedHeaders=host",
)
TEST_LOG_HEAD = """\
............F.....s.....
=================================== FAILURES ===================================
"""
TEST_LOG_TAIL = """\
FAILED tests/unit/test_example.py::test_one - RuntimeError: could not reach vault
SKIPPED [1] tests/live/test_example.py:12: PROM_URL not set
1 failed, 22 passed, 1 skipped in 4.56s
"""


def written_forms(value: str) -> list[str]:
    """A value as a log, a JSON body or a URL may carry it."""
    forms = [value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]]
    return [*forms, quote(value), quote(value, safe=""), quote_plus(value)]


@pytest.fixture(scope="module")
def secret_env() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    dead = int(free_address().rsplit(":", 1)[1])
    return {
        "VAULT_ADDR": f"http://127.0.0.1:{dead}",
        "VAULT_TOKEN": f"hvs.vault-token-{tag}",
        "MINIO_ENDPOINT": f"127.0.0.1:{dead}",
        "MINIO_ACCESS_KEY": f"minio-access-{tag}",
        "MINIO_SECRET_KEY": f"minio/secret+{tag}",  # characters that JSON and URLs write differently
        "POSTGRES_DSN": f"postgresql://lpuser:pg-pass-{tag}@127.0.0.1:{dead}/launchpad",
        "OPENAI_KEY": f"sk-openai-{tag}",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{dead}/v1",
        "LAUNCHPAD_ADMIN_PASSWORD": f"admin+pass/{tag}",
        "deploy_hook_secret": f'hook "secret" {tag}',  # a lower-case name
    }


def secret_values(secret_env: dict[str, str]) -> list[str]:
    """Every secret the environment holds: the secret-named values and the DSN's password alone."""
    named = [v for k, v in secret_env.items() if re.search("KEY|SECRET|TOKEN|PASSWORD|DSN", k, re.I)]
    return [*named, secret_env["POSTGRES_DSN"].split(":")[2].split("@")[0]]


@dataclass
class Run:
    text: str  # the report
    stdout: str
    stderr: str
    code: int
    stack_log: Path


@pytest.fixture(scope="module")
def report(secret_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("report")
    log = folder / "F.backend_tests.log"
    leaks = [f"E   {name}={value}" for name, value in secret_env.items()]
    leaks += [f"E   {form}" for value in secret_values(secret_env) for form in written_forms(value)]
    leaks += [f"E   Authorization: Bearer {JWT}", *(f"E   PUT {url} -> 403" for url in SIGNED_URLS)]
    log.write_text(TEST_LOG_HEAD + "\n".join(leaks) + "\n" + TEST_LOG_TAIL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update(secret_env, PYTHONPATH=f"{ROOT / 'generated'}:{ROOT}")
    out, stack_log = folder / "summary.md", folder / "stack.log"
    command = [sys.executable, "-m", "tools.report", "--out", str(out), "--test-log", str(log)]
    command += ["--base-port", str(BASE_PORT), "--stack-log", str(stack_log)]
    # Its own session: on a timeout the report and the stack it started go together.
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return Run(out.read_text(), stdout, stderr, proc.returncode, stack_log)


def test_no_secret_reaches_the_report(report: Run, secret_env: dict[str, str]) -> None:
    outputs = {"report": report.text, "stdout": report.stdout, "stderr": report.stderr}
    outputs["stack log"] = report.stack_log.read_text()  # kept beside the report, quoted when the stack fails
    for where, output in outputs.items():
        for value in secret_values(secret_env):
            for form in written_forms(value):
                assert form not in output, (where, form)
        assert not re.search(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.", output), (where, "a JWT")
        assert not re.search(r"(?i)[?&](sig|X-Amz-Signature|X-Amz-Credential)=(?!<redacted>)", output), (
            where,
            "a URL signature",
        )


def test_the_test_log_is_quoted_scrubbed(report: Run) -> None:
    """What the leak test looks for did reach the report's input, and went through the scrubber."""
    text = report.text
    assert f"E   VAULT_TOKEN={REDACTED}" in text and f"E   deploy_hook_secret={REDACTED}" in text
    assert f"E   MINIO_SECRET_KEY={REDACTED}" in text and f"E   LAUNCHPAD_ADMIN_PASSWORD={REDACTED}" in text
    assert "E   Authorization: Bearer <redacted JWT>" in text
    assert f"?sig={REDACTED}&exp=1700000000" in text
    assert f"X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}&X-Amz-SignedHeaders=host" in text


def test_every_verification_step_succeeds(report: Run) -> None:
    failed = "\n".join(re.findall(r"^\|.*\*\*FAILED\*\*.*$", report.text, re.M))
    assert report.code == 0, report.stdout + report.stderr + failed
    assert report.stdout.startswith("wrote ") and "FAILED" not in report.stdout


def test_the_stack_output_goes_to_its_own_file(report: Run) -> None:
    assert '"message":"serving"' in report.stack_log.read_text()  # the services' log lines
    assert '"message":"serving"' not in report.stdout + report.stderr
    assert f"The stack's own output is in `{report.stack_log}`." in report.text


def test_the_report_has_every_section_of_the_seed(report: Run) -> None:
    text = report.text
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert f"- commit: `{commit}`" in text
    assert "| `POSTGRES_DSN` | present |" in text and "| `PROM_URL` | missing |" in text
    assert "| 22 | 1 | 0 | 1 |" in text and "FAILED tests/unit/test_example.py::test_one" in text
    assert "Result: **FAIL**." in text
    # verification outputs: the real answers, secrets redacted
    assert '"rows": [[1]]' in text
    assert '"token": "<redacted>"' in text
    assert "sig=<redacted>" in text and "launchpad wiring report" in text  # downloaded through the signed URL
    assert "`PUT <signed URL, signature altered> (24 bytes)` -> 403" in text  # and refused once altered
    assert '"status": "succeeded"' in text and "DeployArtifact" in text
    assert '"kind": "heartbeat"' in text and '"hello": "report"' in text
    assert "/api/ai/sql/suggest" in text and '"suggestions"' in text
    assert '"entries": [' in text and '"resultType": "vector"' in text
    # the files of the system
    assert "── report/" in text and "── scenarios.py" in text  # tools/report/, the report's own code
    assert re.search(r"generated/  \(\d+ files\)", text)
    # the test log itself, scrubbed
    assert "SKIPPED [1] tests/live/test_example.py:12: PROM_URL not set" in text


def test_fallbacks_are_blocked_with_their_remediation(report: Run) -> None:
    text = report.text
    assert "| data | sql | fallback | yes |" in text
    blocked = [line for line in text.splitlines() if line.startswith("- **BLOCKED**")]
    assert any(
        "data/sql: configured but not answering" in line and "Remediation: set POSTGRES_DSN" in line
        for line in blocked
    ), blocked
    assert any("storage/objects: configured but not answering" in line for line in blocked), blocked
    assert any("deploy/signing" in line and "VAULT_ADDR" in line for line in blocked), blocked


def test_the_report_stack_is_stopped(report: Run) -> None:
    ports = stack_ports(BASE_PORT)
    assert len(ports) == 17  # the edge, 8 services and their /metrics
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port


# --- the pieces, directly --------------------------------------------------------------------------------


def test_scrubber_removes_every_written_form_of_a_secret() -> None:
    secret = 'pa"ss\\wörd/+ &x'
    scrub = Scrubber({"my_api_key": secret})  # the name in lower case
    for form in written_forms(secret):
        assert scrub(f"before {form} after") == f"before {REDACTED} after", form


def test_scrubber_removes_passwords_inside_urls_and_dsns() -> None:
    env = {
        "REDIS_URL": "redis://:r3dis-pass@127.0.0.1:6379/0",
        "PGCONN": "host=db password='kv-pass-1' user=x",
    }
    assert Scrubber(env)("a r3dis-pass b kv-pass-1") == f"a {REDACTED} b {REDACTED}"


def test_scrubber_removes_url_signatures_and_jwts_anywhere() -> None:
    text = (
        "GET /o?X-Amz-Credential=AK%2F2024&X-Amz-Signature=00ff&x-id=1\n"
        "<CanonicalRequest>a=1&amp;X-Amz-Security-Token=tok9</CanonicalRequest>\n"
        '"https://f/o?SIG=abc&exp=2" ws://e/ws?token=t0k&b=1\n'
        f"Bearer {JWT} unsigned eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0. end"
    )
    assert Scrubber({})(text) == (
        "GET /o?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&x-id=1\n"
        "<CanonicalRequest>a=1&amp;X-Amz-Security-Token=<redacted></CanonicalRequest>\n"
        '"https://f/o?SIG=<redacted>&exp=2" ws://e/ws?token=<redacted>&b=1\n'
        "Bearer <redacted JWT> unsigned <redacted JWT> end"
    )


def test_scrubber_leaves_numbers_short_values_common_words_and_paths() -> None:
    env = {
        "LAUNCHPAD_TOKEN_TTL_S": "604800",
        "SHORT_KEY": "abc12",
        "FEATURE_SECRET": "enabled",
        "COSIGN_KEY_PATH": "/etc/launchpad/cosign.key",
        "API_VERSION_TOKEN": "10.20.30",
    }
    text = "604800 seconds, abc12, enabled, /etc/launchpad/cosign.key, 10.20.30, VAULT_TOKEN_TTL=604800"
    assert Scrubber(env)(text) == text


def test_redact_url_replaces_the_signature_and_credential_only() -> None:
    url = (
        "http://127.0.0.1:9000/b/hello.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20240101"
        "&X-Amz-Signature=0a1b&sig=s1&exp=99"
    )
    assert redact_url(url) == (
        "http://127.0.0.1:9000/b/hello.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=<redacted>"
        "&X-Amz-Signature=<redacted>&sig=<redacted>&exp=99"
    )


def test_a_step_scrubs_an_answer_before_cutting_it() -> None:
    secret = "cut-in-half-secret"
    step = Step("t", scrub=Scrubber({"X_TOKEN": secret}))
    step.show(f"GET /x?k={secret}", "a" * 10 + secret + "b" * 100, 200, limit=20)
    step.show("POST /signed-url", {"url": "http://h/o?X-Amz-Signature=ab12&a=1"}, 200)
    shown = "\n".join(step.entries)
    assert secret[:5] not in shown and f"`GET /x?k={REDACTED}` -> 200" in shown
    assert f"{'a' * 10}{REDACTED}\n... (" in shown
    assert f"X-Amz-Signature={REDACTED}&a=1" in shown


def test_a_caller_notes_the_answers_not_as_expected() -> None:
    """What fails a report step beside its verdict: a status other than the one a scenario asked for."""
    statuses = {"/ok": 200, "/missing": 404, "/refused": 403}
    transport = httpx.MockTransport(lambda request: httpx.Response(statuses[request.url.path], json={}))
    recorded: list[tuple[str, int | None]] = []
    with httpx.Client(base_url="http://edge", transport=transport) as http:
        caller = Caller(
            Session(http, token="t0k"), lambda request, answer, status: recorded.append((request, status))
        )
        caller.call("GET", "/ok")
        caller.call("GET", "/refused", expect=403)
        caller.call("GET", "/missing", check=False)
        caller.call("POST", "/missing", {"password": "pw-123456"}, shown={"password": REDACTED})
    assert caller.surprises == [f'POST /missing {{"password": "{REDACTED}"}} -> 404']
    assert recorded[-1] == (f'POST /missing {{"password": "{REDACTED}"}}', 404)
    assert len(recorded) == 4


def test_parse_test_log_reads_pytest_summaries() -> None:
    summary = parse_test_log(
        "x\n==== 2 failed, 10 passed, 3 skipped, 1 error, 4 warnings in 12.30s (0:00:12) ====\n"
    )
    assert summary.counts == {"failed": 2, "passed": 10, "skipped": 3, "errors": 1, "warnings": 4}
    assert parse_test_log("FAILED a.py::b\n").counts == {}  # a run that never finished has no counts
