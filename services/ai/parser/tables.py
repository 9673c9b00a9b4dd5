"""Steps 3 and 6 of a reading: the main table and which table each column word means; then the other
tables named (joined for their name, or EXISTS / NOT EXISTS for "with" / "without" rows of a child table)
and the columns to show."""

from __future__ import annotations

from services.ai.parser.state import Reading
from services.ai.query import Ref
from services.ai.schema import CannotAnswer
from services.ai.words import GROUP_WORDS, NOT, Tok

_NEGATIONS = frozenset({"without", "no", "never", "not", "zero"})
_LINKS = frozenset({"with", "have", "has", "having", "had", "who", "that", "without", "no"})
_LISTED = frozenset({"their", "and", "along", "including", "plus", "its"})


def choose_main(r: Reading) -> None:
    """The first table named (not after "per"/"by"), else the table whose columns are named."""
    mentions = [i for i, t in enumerate(r.toks) if t.table and not t.used]
    subjects = [i for i in mentions if r.word(r.prev(i)) not in GROUP_WORDS]
    chosen = (subjects or mentions or [None])[0]
    if chosen is not None:
        tok = r.toks[chosen]
        r.main, r.main_named, r.main_plural = tok.table, True, tok.plural
        tok.used = True
        return
    scores: dict[str, int] = {}
    for tok in r.toks:
        for table in {table for table, _ in tok.columns}:
            scores[table] = scores.get(table, 0) + 1
    if not scores:
        raise CannotAnswer(
            f"none of your tables or columns is named in the question (your tables: {r.schema.names})"
        )
    best = max(scores.values())
    tied = sorted(t for t, s in scores.items() if s == best)
    if len(tied) > 1:
        raise CannotAnswer(f"the question could be about {' or '.join(tied)}: name the table")
    r.main = tied[0]


def resolve(r: Reading) -> None:
    distance = r.index.distances(r.main)
    named = [t.table for t in r.toks if t.table]
    for i, tok in enumerate(r.toks):
        if tok.columns and not tok.table:
            tok.column = _pick(r, i, tok, distance, named)


def _pick(r: Reading, i: int, tok: Tok, distance: dict[str, int], named: list[str]) -> Ref | None:
    options = [c for c in tok.columns if c[0] in distance]
    if not options:
        return None
    # a table named next to it: "customer name", "name of the customer"
    after = r.next(i + 1) if r.word(i + 1) == "of" else -1
    for q in (i - 1, after):
        qualifier = r.tok(q)
        hit = [c for c in options if qualifier is not None and c[0] == qualifier.table]
        if hit and qualifier is not None:
            qualifier.used = True
            return hit[0]
    for table in (r.main, *named):
        hit = [c for c in options if c[0] == table]
        if hit:
            return hit[0]
    nearest = min(distance[c[0]] for c in options)
    tables = sorted({c[0] for c in options if distance[c[0]] == nearest})
    if len(tables) > 1:
        raise CannotAnswer(f"'{tok.text}' could be a column of {' or '.join(tables)}: name the table")
    return next(c for c in options if distance[c[0]] == nearest)


def read_other_tables(r: Reading) -> None:
    for i, tok in enumerate(r.toks):
        if not tok.table or tok.used or tok.table == r.main:
            continue
        before = {r.word(k) for k in range(i - 3, i)}
        negated = bool(before & _NEGATIONS)
        r.use(*(k for k in range(max(i - 3, 0), i) if r.word(k) in NOT))
        if is_child(r, tok.table) and before & _LINKS and not before & _LISTED:
            r.exists.append((tok.table, negated))
        else:
            r.shown.append(tok.table)
        tok.used = True


def one_per_row(r: Reading, table: str) -> bool:
    """Whether each row of the main table has at most one row of `table` (itself, or a parent)."""
    return table == r.main or any(n == table and not child for n, _, _, child in r.links(r.main))


def is_child(r: Reading, table: str) -> bool:
    return any(n == table and child for n, _, _, child in r.links(r.main))


def read_projection(r: Reading) -> None:
    for tok in r.toks:
        if tok.column is not None and not tok.used:
            if tok.column not in r.select:
                r.select.append(tok.column)
            tok.used = True
    only_columns = r.select and not r.main_named and not (r.aggs or r.count or r.groups)
    if only_columns and all(t.plural for t in r.toks if t.column in r.select):
        r.distinct = True  # "list all categories": the different values
    for tok in r.toks:
        if tok.low in ("date", "time", "when") and not tok.used:
            tok.used = True
            ref = r.time_column(r.main, tok.text)
            if r.select and ref not in r.select:
                r.select.append(ref)
