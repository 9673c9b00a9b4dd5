"""SQLite's tokens, by its own rules (src/tokenize.c): what policy enforcement reads a caller's SQL with."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TOKEN = re.compile(
    r"""(?P<space>[ \t\n\v\f\r]+|--[^\n]*|/\*.*?(?:\*/|\Z))
      |(?P<blob>[xX]'[^']*'?)
      |(?P<string>'(?:[^']|'')*'?)
      |(?P<quoted>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
      |(?P<number>0[xX][0-9A-Fa-f]*|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d*)?)
      |(?P<param>\?\d*|[:@$#][0-9A-Za-z_$\x80-\U0010ffff]*)
      |(?P<word>[A-Za-z_\x80-\U0010ffff][0-9A-Za-z_$\x80-\U0010ffff]*)
      |(?P<op>\|\||->>|->|<=|>=|==|!=|<>|<<|>>|.)""",
    re.VERBOSE | re.DOTALL,
)


def fold(name: str) -> str:
    """A name as SQLite compares it: case-insensitive for ASCII letters only."""
    return name.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # space (also comments), blob, string, quoted, number, param, word, op
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def word(self) -> str:
        """A bare word in upper case (keywords), else ""."""
        return self.text.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str | None:
        """The identifier this token can stand for, folded: bare, quoted, or a string (SQLite accepts
        'notes' where a name is expected)."""
        if self.kind == "word":
            return fold(self.text)
        if self.kind in ("quoted", "string") and len(self.text) >= 2:
            body, close = self.text[1:-1], self.text[-1]
            if self.text[0] == "[":
                return fold(body)
            return fold(body.replace(close * 2, close))
        return None


def tokenize(sql: str) -> list[Token]:
    """The significant tokens of `sql` (comments and spaces dropped), with their offsets."""
    tokens = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "op"
        if kind != "space":
            tokens.append(Token(kind, match.group(), match.start()))
    return tokens
