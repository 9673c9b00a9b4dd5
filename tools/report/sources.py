"""What the report reads besides the stack: git, the environment's variable names, pytest's saved log, the
file list, and the dependency modes a /health answer carries."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

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


def git(*args: str) -> str:
    """git's answer in the repository, or "" when git fails (no repository, no commit yet)."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def tracked_files() -> list[str]:
    """Tracked and new files, as `git ls-files` lists them (ignored ones left out)."""
    return git("ls-files", "--cached", "--others", "--exclude-standard").splitlines()


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


def tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines of a file and how many it has (none when it does not exist)."""
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return text[-count:], len(text)


def dependencies(health: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every dependency of every service in a /health answer, with the service's name added."""
    for service, entry in health.get("services", {}).items():
        for dep in entry.get("dependencies", []):
            yield {**dep, "service": service}


def dependency_live(health: dict[str, Any], service: str, name: str) -> bool:
    return any(
        d["service"] == service and d["name"] == name and d["mode"] == "live" for d in dependencies(health)
    )
