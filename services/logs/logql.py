"""A LogQL subset: `{service="data", level=~"warn|error"} |= "text" != "x" |~ "re" !~ "re"`.

Label matchers `=`, `!=`, `=~`, `!~` (regexes fully anchored, as in Loki) and line filters `|=`, `!=`, `|~`,
`!~`. Strings are double-quoted (with backslash escapes) or backquoted (raw). A query that cannot be parsed
raises InvalidArgument carrying the 0-based character position, so the client can point at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.core.errors import InvalidArgument

_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MATCH_OPS = ("=~", "!~", "!=", "=")
_FILTER_OPS = ("|=", "!=", "|~", "!~")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.regex is not None:
            found = self.regex.fullmatch(actual) is not None
            return found if self.op == "=~" else not found
        return (actual == self.value) if self.op == "=" else (actual != self.value)

    def render(self) -> str:
        return f"{self.label}{self.op}{_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class LineFilter:
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, line: str) -> bool:
        found = self.regex.search(line) is not None if self.regex is not None else self.value in line
        return found if self.op in ("|=", "|~") else not found

    def render(self) -> str:
        return f"{self.op} {_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class Selector:
    matchers: tuple[Matcher, ...] = ()
    filters: tuple[LineFilter, ...] = field(default=())

    def matches(self, labels: dict[str, str], line: str) -> bool:
        return all(m.matches(labels) for m in self.matchers) and all(f.matches(line) for f in self.filters)

    def with_level(self, level: str) -> Selector:
        """The selector narrowed to one level (the request's `level` field), as a label matcher."""
        if not level:
            return self
        return Selector((*self.matchers, Matcher("level", "=", level.lower())), self.filters)

    def render(self) -> str:
        """LogQL for Loki. An empty selector becomes `{service=~".+"}`: Loki wants one non-empty matcher."""
        matchers = ", ".join(m.render() for m in self.matchers) or 'service=~".+"'
        return " ".join([f"{{{matchers}}}", *(f.render() for f in self.filters)])


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, expected: str, pos: int | None = None) -> InvalidArgument:
        at = self.pos if pos is None else pos
        near = self.text[at : at + 12] or "end of query"
        return InvalidArgument(
            f"cannot parse the log query at position {at}: expected {expected}, found {near!r}",
            position=at,
            query=self.text,
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def take(self, *options: str) -> str | None:
        self.skip_space()
        for option in options:
            if self.text.startswith(option, self.pos):
                self.pos += len(option)
                return option
        return None

    def string(self) -> str:
        self.skip_space()
        start = self.pos
        quote = self.text[self.pos : self.pos + 1]
        if quote not in ('"', "`"):
            raise self.fail("a quoted string")
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char == "\\" and quote == '"':
                escaped = self.text[self.pos : self.pos + 1]
                if escaped not in _ESCAPES:
                    raise self.fail('a valid escape (\\" \\\\ \\n \\t \\r)', self.pos)
                out.append(_ESCAPES[escaped])
                self.pos += 1
            else:
                out.append(char)
        raise self.fail("a closing quote", start)

    def regex(self, value: str, at: int) -> re.Pattern[str]:
        try:
            return re.compile(value)
        except re.error as exc:
            raise self.fail(f"a valid regular expression ({exc.msg})", at) from None

    def matcher(self) -> Matcher:
        self.skip_space()
        found = _LABEL.match(self.text, self.pos)
        if found is None:
            raise self.fail("a label name")
        self.pos = found.end()
        op = self.take(*_MATCH_OPS)
        if op is None:
            raise self.fail("a label matcher (=, !=, =~, !~)")
        self.skip_space()
        at = self.pos
        value = self.string()
        regex = self.regex(value, at) if op in ("=~", "!~") else None
        return Matcher(found.group(), op, value, regex)

    def selector(self) -> tuple[Matcher, ...]:
        if self.take("{") is None:
            raise self.fail("a stream selector starting with '{'")
        matchers: list[Matcher] = []
        if self.take("}"):
            return ()
        while True:
            matchers.append(self.matcher())
            if self.take("}"):
                return tuple(matchers)
            if self.take(",") is None:
                raise self.fail("',' or '}'")

    def line_filter(self) -> LineFilter:
        op = self.take(*_FILTER_OPS)
        if op is None:
            raise self.fail("a line filter (|=, !=, |~, !~) or the end of the query")
        self.skip_space()
        at = self.pos
        value = self.string()
        return LineFilter(op, value, self.regex(value, at) if op.endswith("~") else None)


def parse(query: str) -> Selector:
    """Parses a query; an empty query selects every line."""
    parser = _Parser(query)
    parser.skip_space()
    if parser.pos == len(query):
        return Selector()
    matchers = parser.selector()
    filters: list[LineFilter] = []
    while True:
        parser.skip_space()
        if parser.pos == len(query):
            return Selector(matchers, tuple(filters))
        filters.append(parser.line_filter())
