"""`make report` (python -m services.report) end to end: it starts its own stack (ports 38501, 38511-38518;
/metrics on 39511-39518), calls it, and writes the summary. Known secret values sit in the environment; none of
them, nor the admin password, nor any JWT or URL signature, may reach the report or what the command prints.

The configured servers do not answer (a closed port), so the dependencies fall back to their embedded
defaults: the report must say BLOCKED, why, and the remediation, and every verification step still succeeds.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid

import pytest

from services.report import ROOT, parse_test_log
from tests.integration.test_endpoints import STRIPPED_PREFIXES
from tests.support import free_address

BASE_PORT = 38500
TEST_LOG = """\
............F.....s.....
=================================== FAILURES ===================================
E   RuntimeError: could not reach vault with VAULT_TOKEN={vault_token}
FAILED tests/unit/test_example.py::test_one - RuntimeError: could not reach vault
SKIPPED [1] tests/live/test_example.py:12: PROM_URL not set
1 failed, 22 passed, 1 skipped in 4.56s
"""


@pytest.fixture(scope="module")
def secret_env() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    dead = int(free_address().rsplit(":", 1)[1])
    return {
        "VAULT_ADDR": f"http://127.0.0.1:{dead}",
        "VAULT_TOKEN": f"hvs.vault-token-{tag}",
        "MINIO_ACCESS_KEY": f"minio-access-{tag}",
        "MINIO_SECRET_KEY": f"minio-secret-{tag}",
        "POSTGRES_DSN": f"postgresql://lpuser:pg-pass-{tag}@127.0.0.1:{dead}/launchpad",
        "OPENAI_KEY": f"sk-openai-{tag}",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{dead}/v1",
        "LAUNCHPAD_ADMIN_PASSWORD": f"admin-pass-{tag}",
    }


@pytest.fixture(scope="module")
def report(secret_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, int]:
    """(the report's text, what the command printed, its exit code)."""
    folder = tmp_path_factory.mktemp("report")
    log = folder / "F.backend_tests.log"
    log.write_text(TEST_LOG.format(vault_token=secret_env["VAULT_TOKEN"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update(secret_env, PYTHONPATH=f"{ROOT / 'generated'}:{ROOT}")
    out = folder / "summary.md"
    command = [sys.executable, "-m", "services.report", "--out", str(out), "--test-log", str(log)]
    done = subprocess.run(
        [*command, "--base-port", str(BASE_PORT)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300, check=False,
    )  # fmt: skip
    return out.read_text(), done.stdout, done.returncode


def test_no_secret_reaches_the_report(report: tuple[str, str, int], secret_env: dict[str, str]) -> None:
    for output in report[:2]:
        for name in (
            "VAULT_TOKEN",
            "MINIO_ACCESS_KEY",
            "MINIO_SECRET_KEY",
            "OPENAI_KEY",
            "LAUNCHPAD_ADMIN_PASSWORD",
        ):
            assert secret_env[name] not in output, name
        assert secret_env["POSTGRES_DSN"] not in output
        assert "pg-pass-" not in output  # the DSN's password, alone
        assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", output), "a JWT"
        assert not re.search(r"[?&](sig|X-Amz-Signature)=(?!%3Credacted|<redacted>)", output), (
            "a URL signature"
        )


def test_every_verification_step_succeeds(report: tuple[str, str, int]) -> None:
    text, printed, code = report
    assert code == 0, printed + "\n".join(re.findall(r"^\|.*\*\*FAILED\*\*.*$", text, re.M))
    assert printed.startswith("wrote ") and "FAILED" not in printed


def test_the_report_has_every_section_of_the_seed(report: tuple[str, str, int]) -> None:
    text = report[0]
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
    assert '"status": "succeeded"' in text and "DeployArtifact" in text
    assert '"kind": "heartbeat"' in text and '"hello": "report"' in text
    assert "/api/ai/sql/suggest" in text and '"suggestions"' in text
    # the files of the system
    assert "report.py" in text and re.search(r"generated/  \(\d+ files\)", text)
    # the test log itself, scrubbed
    assert "SKIPPED [1] tests/live/test_example.py:12: PROM_URL not set" in text


def test_fallbacks_are_blocked_with_their_remediation(report: tuple[str, str, int]) -> None:
    text = report[0]
    assert "| data | sql | fallback | yes |" in text
    blocked = [line for line in text.splitlines() if line.startswith("- **BLOCKED**")]
    assert any(
        "data/sql: configured but not answering" in line and "Remediation: set POSTGRES_DSN" in line
        for line in blocked
    ), blocked
    assert any("deploy/signing" in line and "VAULT_ADDR" in line for line in blocked), blocked


def test_parse_test_log_reads_pytest_summaries() -> None:
    summary = parse_test_log(
        "x\n==== 2 failed, 10 passed, 3 skipped, 1 error, 4 warnings in 12.30s (0:00:12) ====\n"
    )
    assert summary.counts == {"failed": 2, "passed": 10, "skipped": 3, "errors": 1, "warnings": 4}
    assert parse_test_log("FAILED a.py::b\n").counts == {}  # a run that never finished has no counts


def test_the_report_stack_is_stopped(report: tuple[str, str, int]) -> None:
    for port in (BASE_PORT + 1, BASE_PORT + 11, BASE_PORT + 18):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port
