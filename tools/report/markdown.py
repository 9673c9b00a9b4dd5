"""The report's sections as markdown lines, one function per section, from what sources.py read and what the
smoke test recorded. Nothing here scrubs: the whole text is scrubbed once it is put together."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.report.smoke import Smoke
from tools.report.sources import ENV_VARS, ROOT, dependencies, git, parse_test_log, tail, tracked_files

LOG_TAIL_LINES = 150
STACK_LOG_LINES = 40  # of the stack's output, quoted when it did not start
_TREE_COLLAPSED = ("generated", "third_party")  # shown as a file count: machine-made or vendored
_TEST_KINDS = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed", "deselected")


def section_title(stamp: str) -> list[str]:
    return [
        "# Phase F backend wiring summary",
        "",
        f"Written {stamp} by `make report` (`python -m tools.report`).",
    ]


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
    lines += ["", "| " + " | ".join(_TEST_KINDS) + " |", "|" + "---|" * len(_TEST_KINDS)]
    lines.append("| " + " | ".join(str(summary.counts.get(k, 0)) for k in _TEST_KINDS) + " |")
    lines += ["", f"pytest: `{summary.summary_line}`"]
    failed = summary.counts.get("failed", 0) + summary.counts.get("errors", 0)
    lines += ["", f"Result: **{'FAIL' if failed else 'PASS'}**."]
    if summary.problems:
        lines += ["", "Failures:", "", *(f"- `{p}`" for p in summary.problems)]
    if summary.skips:
        lines += ["", "Skipped:", "", *(f"- `{s}`" for s in summary.skips)]
    return lines


def section_verification(smoke: Smoke | None, stack_error: str, ports: str, stack_log: Path) -> list[str]:
    lines = ["## Verification outputs", ""]
    lines.append(
        f"The real answers of a stack started for this report ({ports}), called as the README's curl"
    )
    lines.append("examples call it. Tokens, passwords and URL signatures are redacted.")
    lines.append(f"The stack's own output is in `{_shown(stack_log)}`.")
    if smoke is None:
        lines += ["", f"**The stack did not start:** `{stack_error}`"]
        # Quoted from a file no one scrubbed: the whole report is scrubbed, this part included.
        shown, _ = tail(stack_log, STACK_LOG_LINES)
        return [*lines, "", "Its last lines:", "", "```", *shown, "```"] if shown else lines
    modes: dict[str, list[str]] = {}
    for dep in dependencies(smoke.health):
        modes.setdefault(dep["service"], []).append(f"{dep['name']}: {dep['mode']}")
    lines += ["", "| step | result | served by (dependency modes) |", "|---|---|---|"]
    for step in smoke.steps:
        served = modes.get(step.service, [])
        by = f"{step.service} ({', '.join(served) or 'no dependencies'})" if step.service else "edge"
        lines.append(f"| {step.title} | {'ok' if step.ok else '**FAILED**'} | {by} |")
    for step in smoke.steps:
        lines += ["", f"### {step.title}", "", *step.entries]
    return lines


def section_tree() -> list[str]:
    tree: dict[str, Any] = {}
    for path in sorted(tracked_files()):
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


def section_dependencies(health: dict[str, Any]) -> list[str]:
    lines = ["## Dependencies: modes and BLOCKED items", ""]
    deps = list(dependencies(health))
    if not deps:
        return [*lines, "No /health answer: see the verification section."]
    lines += [f"Gateway env: `{health.get('env', '?')}`, status `{health.get('status', '?')}`.", ""]
    lines += ["| service | dependency | mode | healthy | target |", "|---|---|---|---|---|"]
    lines += [
        f"| {d['service']} | {d['name']} | {d['mode']} | {'yes' if d['healthy'] else '**no**'} | "
        f"`{d.get('target') or '-'}` |"
        for d in deps
    ]
    return [*lines, "", *_blocked(deps)]


def _blocked(deps: list[dict[str, Any]]) -> list[str]:
    """A line per dependency not served by its live server, with why and the fix."""
    lines = ["BLOCKED (not on a live server; the embedded default serves instead):", ""]
    why = {"embedded": "not configured", "fallback": "configured but not answering at start-up"}
    blocked = [d for d in deps if d["mode"] != "live" or not d["healthy"]]
    for d in blocked:
        detail = f" ({d['detail']})" if d.get("detail") else ""
        reason = why.get(d["mode"], "not healthy")
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


def section_log(log: Path) -> list[str]:
    lines = ["## Test log", ""]
    if not log.is_file():
        return [*lines, "(none yet)"]
    shown, total = tail(log, LOG_TAIL_LINES)
    where = "whole" if len(shown) == total else f"last {len(shown)} of {total} lines"
    return [*lines, f"`{_shown(log)}` ({where}):", "", "```", *shown, "```"]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
