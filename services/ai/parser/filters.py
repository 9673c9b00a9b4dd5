"""Step 5 of a reading: filters. "X is V", "X over N", "cheaper than N", "after 2024-05-01", "in 2024",
"X containing V", "not V", "order 5", and boolean columns ("active customers")."""

from __future__ import annotations

import re

from services.ai.parser.state import ARTICLES, Reading
from services.ai.query import Cond, Ref
from services.ai.schema import CannotAnswer
from services.ai.words import COLUMN_LINKS, COMPARATORS_LONGEST_FIRST, MONEY, NOT, TIME, Tok, name_key

TEXT_OPS = frozenset({"CONTAINS", "STARTS", "ENDS"})  # comparisons that only fit a text column
NEGATING = NOT - {"without", "no", "except", "excluding"}  # words that turn the comparison after them
_BE = ARTICLES | {"is", "are", "was", "were", "be", "been"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NEGATED = {
    "=": "<>",
    "<>": "=",
    ">": "<=",
    ">=": "<",
    "<": ">=",
    "<=": ">",
    "IN": "NOT IN",
    "BETWEEN": "NOT BETWEEN",
    "CONTAINS": "NOT CONTAINS",
    "STARTS": "NOT STARTS",
    "ENDS": "NOT ENDS",
}


def read_filters(r: Reading) -> None:
    for i, tok in enumerate(r.toks):
        if tok.column is not None and not tok.used:
            _filter_after_column(r, i)
    for i, tok in enumerate(r.toks):
        if not tok.used:
            _filter_without_column(r, i)
    for i, tok in enumerate(r.toks):
        if tok.table:
            _filter_key(r, i, tok.table)
    for i, tok in enumerate(r.toks):
        if tok.column is not None and not tok.used and r.kind(tok.column) == "bool":
            negated = r.word(i - 1) in NOT
            r.conds.append(Cond(tok.column, "=", (not negated,)))
            r.use(i, i - 1 if negated else -1)


def _comparator_at(r: Reading, j: int) -> tuple[str, str, int] | None:
    """(operator, concept, number of words) of the comparison phrase starting at token j."""
    for words, op, concept in COMPARATORS_LONGEST_FIRST:
        if r.phrase_at(j, words) and not any(r.toks[j + k].used for k in range(len(words))):
            return op, concept, len(words)
    return None


def _filter_after_column(r: Reading, i: int) -> None:
    ref = r.toks[i].column
    assert ref is not None
    before = _negation_before(r, i)  # customers not named Alice
    j = i + 1
    while j < len(r.toks) and not r.toks[j].used and r.word(j) in (COLUMN_LINKS | {"not"}):
        j += 1
    negated = (before >= 0) != _odd_nots(r.toks[i:j])
    year = _year(r, j + 1) if r.word(j) in ("in", "during") else None
    if year is not None and r.kind(ref) == "time":  # joined in 2024
        _in_year(r, ref, year)
        r.use(*range(i, j + 2))
        return
    comparator = _comparator_at(r, j)
    op, start = ("=", j) if comparator is None else (comparator[0], j + comparator[2])
    values, end = _values_at(r, start, op)
    if not values and comparator is None and r.kind(ref) == "text":  # the books category
        values, end = _phrase_before(r, i), i + 1
    if not values:
        return
    add_cond(r, ref, _negate(op) if negated else op, values)
    r.use(*range(i, end), before)


def _negation_before(r: Reading, i: int) -> int:
    """The index of an unused not/never just before token i ("not cheaper", "are not over"), or -1."""
    k = r.prev(i, _BE)
    tok = r.tok(k)
    return k if tok is not None and not tok.used and tok.low in NEGATING else -1


def _phrase_before(r: Reading, i: int) -> tuple[object, ...]:
    words: list[Tok] = []
    k = i - 1
    while k >= 0 and r.plain(r.toks[k]) and len(words) < 4:
        words.insert(0, r.toks[k])
        k -= 1
    if not words:
        return ()
    r.use(*range(k + 1, i))
    return (" ".join(t.text for t in words),)


def _values_at(r: Reading, j: int, op: str) -> tuple[tuple[object, ...], int]:
    """The value(s) starting at token j, and the index after them."""
    first, end = _value(r, j)
    if first is None:
        return (), j
    if op == "BETWEEN":
        second, after = _value(r, end + 1) if r.word(end) == "and" else (None, end)
        return ((first, second), after) if second is not None else ((), j)
    values = [first]
    while r.word(end) in ("or", ",") and op in ("=", "<>"):
        more, after = _value(r, end + 1)
        if more is None:
            break
        values.append(more)
        end = after
    return tuple(values), end


def _value(r: Reading, j: int) -> tuple[object | None, int]:
    tok = r.tok(j)
    if tok is None or tok.used:
        return None, j
    if tok.kind in ("quoted", "date"):
        return tok.text, j + 1
    if tok.kind == "number":
        return tok.number, j + 1
    k = j
    while k < len(r.toks) and r.plain(r.toks[k]) and k - j < 4:
        k += 1
    if k == j:
        return None, j
    return " ".join(t.text for t in r.toks[j:k]), k


def _filter_without_column(r: Reading, i: int) -> None:
    """over 500, cheaper than 10, after 2024-05-01, in 2024: the column follows from the value."""
    tok = r.toks[i]
    year = _year(r, i + 1)
    if tok.low in ("in", "during") and year is not None:
        _in_year(r, r.time_column(r.main, str(year)), year)
        r.use(i, i + 1)
        return
    comparator = _comparator_at(r, i)
    if comparator is None:
        return
    op, concept, length = comparator
    values, end = _values_at(r, i + length, op)
    if not values:
        return
    words = " ".join(t.text for t in r.toks[i:end])
    negation = _negation_before(r, i)  # products not cheaper than 100
    ref = _column_before(r, i, values[0], concept) or _implied_column(r, op, concept, values[0], words)
    add_cond(r, ref, _negate(op) if negation >= 0 else op, values)
    r.use(*range(i, end), negation)


def _in_year(r: Reading, ref: Ref, year: int) -> None:
    """A calendar year as a half-open range: the same text on PostgreSQL and SQLite, dates or timestamps."""
    r.conds.append(Cond(ref, ">=", (f"{year}-01-01",)))
    r.conds.append(Cond(ref, "<", (f"{year + 1}-01-01",)))


def _year(r: Reading, j: int) -> int | None:
    tok = r.tok(j)
    if tok is not None and tok.kind == "number" and not tok.used and "." not in tok.text:
        value = int(tok.text)
        return value if 1900 <= value <= 2200 else None
    return None


def _dated(concept: str, value: object) -> bool:
    """Whether a comparison is about time: its words say so, or its value is a date."""
    return concept == TIME or (isinstance(value, str) and bool(_DATE.match(value)))


def _column_before(r: Reading, i: int, value: object, concept: str) -> Ref | None:
    """customers who signed up after 2024-03-01: the column word a few words before the comparator."""
    wanted = "time" if _dated(concept, value) else "number"
    for k in range(i - 1, max(i - 4, -1), -1):
        ref = r.toks[k].column
        if ref is not None and not r.toks[k].used and r.kind(ref) == wanted:
            r.use(k)
            return ref
    return None


def _implied_column(r: Reading, op: str, concept: str, value: object, words: str) -> Ref:
    if _dated(concept, value):
        return r.time_column(r.main, words)
    if concept == MONEY:
        return r.money_column(r.main, words)
    columns = r.index.table(r.main).columns
    if op in TEXT_OPS:  # notes containing hello: the table's one text column, if it has just one
        texts = [c for c in columns if c.kind == "text"]
        if len(texts) == 1:
            return (r.main, texts[0].name)
        choices = ", ".join(c.name for c in texts) or "none"
        raise CannotAnswer(f"which column of {r.main} should be {words}? (text columns: {choices})")
    numbers = [c for c in columns if c.kind == "number" and not c.primary_key]
    numbers = [c for c in numbers if not c.name.lower().endswith("_id")]
    money = [c for c in numbers if {"price", "total"} & set(name_key(c.name))]
    if len(money or numbers) == 1:
        return (r.main, (money or numbers)[0].name)
    choices = ", ".join(c.name for c in numbers) or "none"
    raise CannotAnswer(f"which column of {r.main} should be {words}? (number columns: {choices})")


def _filter_key(r: Reading, i: int, table: str) -> None:
    """order 5, customer number 3, order #7: the row with that primary key."""
    j = i + 1 if r.word(i + 1) not in ("number", "no", "id", "#") else i + 2
    tok = r.tok(j)
    key = r.key_of(table)
    if tok is None or tok.used or tok.kind != "number" or len(key) != 1:
        return
    r.conds.append(Cond((table, key[0]), "=", (tok.number,)))
    r.use(i + 1, j)


def add_cond(r: Reading, ref: Ref, op: str, values: tuple[object, ...]) -> None:
    kind = r.kind(ref)
    year = values[0] if len(values) == 1 else None
    if kind == "time" and op in (">", ">=", "<", "<=") and _is_year(year):
        assert isinstance(year, int)
        op, values = _year_bound(op, year)  # created before 2024: before 2024-01-01, not before "2024"
    if kind == "text":
        values = tuple(str(v) for v in values)
    if op in ("=", "<>") and len(values) > 1:
        op = "IN" if op == "=" else "NOT IN"
    r.conds.append(Cond(ref, op, values))


def _negate(op: str) -> str:
    return _NEGATED.get(op, op)


def _odd_nots(toks: list[Tok]) -> bool:
    return sum(t.low in NEGATING for t in toks) % 2 == 1


def _is_year(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1000 <= value <= 9999


def _year_bound(op: str, year: int) -> tuple[str, tuple[object, ...]]:
    """after 2023 -> from 2024-01-01; before 2024 -> until 2024-01-01 (exclusive)."""
    if op in (">", "<="):
        year += 1
    return (">=" if op in (">", ">=") else "<"), (f"{year}-01-01",)
