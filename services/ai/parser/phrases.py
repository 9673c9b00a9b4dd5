"""Steps 1 and 2 of a reading: refuse what the generator cannot write, then the fixed phrases ("how many",
"distinct", "sorted by X", "in descending order", "top N", "first N", "N most ...")."""

from __future__ import annotations

from services.ai.parser.state import ARTICLES, Reading
from services.ai.schema import CannotAnswer
from services.ai.words import (
    ADJECTIVES,
    ASC,
    DESC,
    DIRECTIONS,
    FIRST_WORDS,
    SORT_WORDS,
    SUPERLATIVES,
    WRITE_VERBS,
    Tok,
    word_set,
)

_POLITE = word_set("please can could you i want to would like we need let us")
_POSSESSIVES = ARTICLES | {"their", "its", "his", "her"}


def refuse_writes(r: Reading) -> None:
    first = next((t.low for t in r.toks if t.kind == "word" and t.low not in _POLITE), "")
    if first in WRITE_VERBS:
        raise CannotAnswer(
            "this asks to change data or the schema; the embedded generator writes SELECT statements only "
            "(a language model, configured with OPENAI_KEY, can write INSERT, UPDATE and DELETE when "
            "allow_writes is set)"
        )


def read_phrases(r: Reading) -> None:
    for i, tok in enumerate(r.toks):
        if not tok.used:
            _phrase(r, i, tok)


def _phrase(r: Reading, i: int, tok: Tok) -> None:
    low, after = tok.low, r.word(i + 1)
    if low == "how" and after == "many":
        r.count = True
        r.use(i, i + 1)
    elif low == "how" and after == "much":
        r.how_much.add(i)
        r.use(i + 1)
    elif low == "count" and not tok.columns:
        r.count = True
        r.use(i, i + 1 if after == "of" else -1)
    elif low == "number" and after == "of":
        r.count = True
        r.use(i, i + 1, i - 1 if r.word(i - 1) == "total" else -1)
    elif low in ("distinct", "unique", "different"):
        r.distinct = True
        r.use(i)
    elif low in DIRECTIONS:
        r.direction = DIRECTIONS[low]
        r.use(i, i + 1 if after == "order" else -1, i - 1 if r.word(i - 1) == "in" else -1)
    elif low in FIRST_WORDS and after == "first":
        r.direction = FIRST_WORDS[low]
        r.use(i, i + 1, i - 1 if r.word(i - 1) == "most" else -1)
    elif low in SORT_WORDS and after in ("by", "on"):
        _sort_phrase(r, i)
    else:
        _limit_phrase(r, i, tok)


def _sort_phrase(r: Reading, i: int) -> None:
    j = r.next(i + 1, _POSSESSIVES)
    target = r.tok(j)
    if target is not None and (target.columns or target.low in ("date", "time")) and not target.table:
        r.sort_at.append(j)
        r.use(i, i + 1)


def _limit_phrase(r: Reading, i: int, tok: Tok) -> None:
    nxt = r.tok(i + 1)
    if tok.low in ("top", "first", "last", "limit", "only") and nxt is not None and nxt.number is not None:
        r.limit = int(nxt.number)
        r.top = r.top or tok.low == "top"
        r.edge = {"first": ASC, "last": DESC}.get(tok.low, r.edge)
        r.use(i, i + 1)
    elif tok.low == "top":
        r.top = True
        r.use(i)
    elif tok.number is not None and nxt is not None and _counts(nxt):
        r.limit = int(tok.number)
        r.use(i)


def _counts(tok: Tok) -> bool:
    """Whether a number before this word is how many rows to show ("3 most expensive", "5 products")."""
    return bool(tok.table) or tok.low in SUPERLATIVES or tok.low in ADJECTIVES


def read_sorts(r: Reading) -> None:
    """The columns named after "sorted by", once the main table is known."""
    for j in r.sort_at:
        tok = r.toks[j]
        ref = tok.column or r.time_column(r.main, tok.text)
        r.order.append((ref, ASC if r.direction is None else r.direction))
        tok.used = True
