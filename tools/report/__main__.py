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
empty `report-...` bucket, a WPK artifact with its deployment and their audit entries; the user, the object
and the sample table it creates are deleted again.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from tools.report import markdown
from tools.report.scrub import Scrubber
from tools.report.sources import ROOT, dependency_live
from tools.report.stack import DEFAULT_BASE_PORT, describe_ports, verify

DEFAULT_OUT = ROOT / "reports" / "F.backend_wiring_summary.md"
DEFAULT_LOG = ROOT / "reports" / "logs" / "F.backend_tests.log"
DEFAULT_STACK_LOG = ROOT / "reports" / "logs" / "F.report_stack.log"  # the report's stack's stdout/stderr


def build(log: Path, base_port: int, stack_log: Path) -> tuple[str, bool]:
    """The report's text and whether every verification step succeeded."""
    env = dict(os.environ)
    configured = env.get("LAUNCHPAD_ADMIN_PASSWORD", "").strip()
    password = configured or secrets.token_urlsafe(18)
    scrub = Scrubber(env, (password,))
    stack_log.parent.mkdir(parents=True, exist_ok=True)
    with stack_log.open("wb") as output:
        smoke, stack_error = verify(env, base_port, password, scrub, output)
    health = smoke.health if smoke else {}
    sections = [
        markdown.section_title(datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        markdown.section_git(),
        markdown.section_env(env),
        markdown.section_tests(log),
        markdown.section_verification(smoke, stack_error, describe_ports(base_port), stack_log),
        markdown.section_tree(),
        markdown.section_dependencies(health),
        markdown.section_log(log),
    ]
    text = "\n\n".join("\n".join(section) for section in sections) + "\n"
    ok = smoke is not None and all(step.ok for step in smoke.steps) and bool(smoke.token)
    if smoke and smoke.token and not configured and dependency_live(health, "auth", "sql"):
        # A made-up password logged in, so the stack created the admin just now, in a database that stays.
        print(
            f"tools.report: created the first admin 'admin' in the live database (POSTGRES_DSN) with the "
            f"password {password} (shown only here; set LAUNCHPAD_ADMIN_PASSWORD to choose it)",
            file=sys.stderr,
        )
    return scrub(text), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.splitlines()[0])
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
