"""Policies: one language, parsed once into a typed IR (lang), rendered as the Python decision (decide:
dry run, storage, realtime) and as SQL (sql: PostgreSQL row-level security, SQLite's shadow views)."""

from services.core.policy.decide import (
    MISSING,
    Decision,
    PolicySet,
    compile_set,
    dry_run,
    evaluate,
    governed,
    lookup,
    same,
    subject_of,
)
from services.core.policy.lang import Policy, Rule, kind_of, parse_policy

__all__ = [
    "MISSING",
    "Decision",
    "Policy",
    "PolicySet",
    "Rule",
    "compile_set",
    "dry_run",
    "evaluate",
    "governed",
    "kind_of",
    "lookup",
    "parse_policy",
    "same",
    "subject_of",
]
