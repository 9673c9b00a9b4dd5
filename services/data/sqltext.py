"""SQL text the data service must understand before a database sees it: statements, $N parameters, reads.

The database is the enforcement (tenant roles, the SQLite authorizer); this module only gives early, clear
errors and lets PostgreSQL get parameters without psycopg2's client-side `%` rules. Results are cached: the
same statement text is scanned once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp

from services.core.errors import InvalidArgument

# sqlglot logs a warning whenever it falls back to an opaque Command (SHOW, EXPLAIN, ...): not our concern.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_TOKEN = re.compile(
    r"""(?P<string>[eE]'(?:[^'\\]|\\.|'')*'?|'(?:[^']|'')*'?)
      |(?P<quoted>"(?:[^"]|"")*"?)
      |(?P<line>--[^\n]*)
      |(?P<block>/\*)
      |(?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
      |(?P<param>\$\d+)
      |(?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      |(?P<semi>;)
      |(?P<space>\s+)
      |(?P<other>[^\s'"\-/$A-Za-z_;]+|.)""",
    re.VERBOSE | re.DOTALL,
)
_BLOCK = re.compile(r"/\*|\*/")


@dataclass(frozen=True, slots=True)
class Param:
    start: int  # offset of "$N" in the statement
    end: int
    index: int  # N - 1


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement as sent: trailing `;` and comments cut, $N references found (PostgreSQL dialect)."""

    text: str
    keyword: str  # first keyword, upper case ("SELECT", "WITH", "INSERT", ...), "(" for a parenthesized query
    params: tuple[Param, ...]

    @property
    def param_count(self) -> int:
        return max((p.index + 1 for p in self.params), default=0)


CACHED_SQL_CHARS = 4096  # longer texts are scanned each time rather than pinned in the caches


def scan(sql: str) -> Statement:
    """The single statement of `sql`; InvalidArgument when it holds none or several."""
    return _scan_cached(sql) if len(sql) <= CACHED_SQL_CHARS else _scan(sql)


@lru_cache(maxsize=2048)
def _scan_cached(sql: str) -> Statement:
    return _scan(sql)


def _scan(sql: str) -> Statement:
    statements, keyword, params, pos, end, text_end, has_content = 0, "", [], 0, len(sql), 0, False
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        assert match is not None  # the `other` branch matches any character
        kind, pos = match.lastgroup, match.end()
        if kind == "block":
            pos = _skip_block(sql, pos)
            continue
        if kind in ("line", "space"):
            continue
        if kind == "semi":
            statements += has_content
            if has_content and statements == 1:
                text_end = match.start()
            has_content = False
            continue
        if statements:
            raise InvalidArgument(
                "one statement per call: this text holds several; send them as separate queries",
                position=match.start() + 1,
            )
        has_content = True
        end = pos
        if kind == "dollar":
            close = sql.find(match.group(), pos)
            pos = end = len(sql) if close < 0 else close + len(match.group())
        elif kind == "param":
            params.append(Param(match.start(), match.end(), int(match.group()[1:]) - 1))
        elif not keyword:
            keyword = match.group().upper() if kind == "word" else match.group()[:1]
    if not has_content and statements == 0:
        raise InvalidArgument("empty statement: send one SQL statement")
    text = sql[:text_end] if statements else sql[:end]
    return Statement(text, keyword, tuple(p for p in params if p.index >= 0))


def _skip_block(sql: str, pos: int) -> int:
    """End of a (nestable, PostgreSQL-style) block comment that opened just before pos."""
    depth = 1
    while depth:
        match = _BLOCK.search(sql, pos)
        if match is None:
            return len(sql)
        depth += 1 if match.group() == "/*" else -1
        pos = match.end()
    return pos


@dataclass(frozen=True, slots=True)
class Rendered:
    """A statement with its parameters inlined as literals, and how to map positions back."""

    text: str
    shifts: tuple[tuple[int, int, int, int], ...]  # (rendered start, end, original start, end) per literal

    def original_position(self, position: int) -> int:
        """1-based position in `text` -> 1-based position in the caller's statement."""
        offset = position - 1
        delta = 0
        for start, end, source, source_end in self.shifts:
            if offset < start:
                break
            if offset < end:
                return source + 1
            delta = end - source_end
        return offset - delta + 1


def render(statement: Statement, literals: list[str]) -> Rendered:
    """Replaces each $N with literals[N-1] (already quoted by the driver)."""
    if statement.param_count != len(literals):
        raise InvalidArgument(
            f"the statement uses {statement.param_count} parameter(s) ($1..$N) but {len(literals)} were given"
        )
    if not literals:
        return Rendered(statement.text, ())
    parts, shifts, last, length = [], [], 0, 0
    for param in statement.params:
        parts.append(statement.text[last : param.start])
        length += param.start - last
        literal = literals[param.index]
        shifts.append((length, length + len(literal), param.start, param.end))
        parts.append(literal)
        length += len(literal)
        last = param.end
    parts.append(statement.text[last:])
    return Rendered("".join(parts), tuple(shifts))


_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Into, exp.Lock)


def reads_only(sql: str, dialect: str) -> bool | None:
    """True when sqlglot parses `sql` as a query that changes nothing; None when it cannot tell."""
    return _reads_only_cached(sql, dialect) if len(sql) <= CACHED_SQL_CHARS else _reads_only(sql, dialect)


@lru_cache(maxsize=1024)
def _reads_only_cached(sql: str, dialect: str) -> bool | None:
    return _reads_only(sql, dialect)


def _reads_only(sql: str, dialect: str) -> bool | None:
    try:
        trees = sqlglot.parse(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return None
    trees = [tree for tree in trees if tree is not None]
    if len(trees) != 1:
        return None
    tree = trees[0]
    if isinstance(tree, exp.Command):
        return None
    return isinstance(tree, exp.Query | exp.Values) and tree.find(*_WRITES) is None
