"""Step 4 of a reading: aggregates ("total X", "average X", "how much"), superlatives ("most expensive",
"latest", "highest price", "the most orders") and groups ("per X", "by X", "for each X", "per month")."""

from __future__ import annotations

from services.ai.parser.state import ARTICLES, Grouping, Reading
from services.ai.query import Agg, Bucket, Ref, singular_of
from services.ai.schema import CannotAnswer
from services.ai.words import ADJECTIVES, AGGREGATES, BUCKETS, GROUP_WORDS, SUPERLATIVES

_GROUP_LEADS = frozenset({"for", "grouped", "broken", "split", "group"})  # "for each", "grouped by"


def read_aggregates(r: Reading) -> None:
    for i, tok in enumerate(r.toks):
        if i in r.how_much:
            j = next((k for k in range(i + 1, len(r.toks)) if _numeric(r, k)), -1)
            _aggregate(r, i, j, "SUM")
        elif not tok.used and tok.low in AGGREGATES:
            j = r.next(i, ARTICLES | {"of", "all"})
            qualifier = r.tok(j)
            if qualifier is not None and qualifier.table:  # "total order amount"
                j = r.next(j, ARTICLES | {"of"})
            _aggregate(r, i, j, AGGREGATES[tok.low])


def _numeric(r: Reading, j: int) -> bool:
    ref = r.toks[j].column
    return ref is not None and not r.toks[j].used and r.kind(ref) == "number"


def _aggregate(r: Reading, i: int, j: int, func: str) -> None:
    target = r.tok(j)
    if target is None or target.column is None or target.used:
        return
    if func in ("SUM", "AVG") and r.kind(target.column) != "number":
        if r.toks[i].columns:
            return  # "total" is itself a column here
        raise CannotAnswer(f"{target.column[1]} is not a number column, so it has no {func.lower()}")
    r.aggs.append(_agg(func, target.column))
    r.use(i, j)


def _agg(func: str, ref: Ref) -> Agg:
    return Agg(func, ref, f"{func.lower()}_{ref[1]}")


def read_superlatives(r: Reading) -> None:
    for i, tok in enumerate(r.toks):
        if tok.used:
            continue
        if tok.low in SUPERLATIVES and r.word(i - 1) not in ("at", "no"):  # not "at least"
            _superlative(r, i, SUPERLATIVES[tok.low])
        elif tok.low in ADJECTIVES and not tok.columns:
            concept, desc = ADJECTIVES[tok.low]
            r.order.append((r.concept_column(concept, tok.text), desc))
            r.superlative = True
            r.use(i)


def _superlative(r: Reading, i: int, desc: bool) -> None:
    j = r.next(i)
    nxt = r.tok(j)
    if nxt is not None and nxt.low in ADJECTIVES and not nxt.used:  # most expensive, least recent
        concept, adjective = ADJECTIVES[nxt.low]
        r.order.append((r.concept_column(concept, nxt.text), adjective if desc else not adjective))
    elif nxt is not None and nxt.column is not None:  # highest price
        _rank_by_column(r, nxt.column, desc)
    elif nxt is not None and nxt.table and nxt.table != r.main:  # the most orders
        key = r.key_of(nxt.table)
        agg = Agg("COUNT", (nxt.table, key[0]) if key else None, f"{singular_of(nxt.table)}_count")
        r.aggs.append(agg)
        r.order.append((agg, desc))
    else:  # spent the most: the column named just before; the biggest order: its amount
        j = next((k for k in range(i - 1, max(i - 4, -1), -1) if r.unused_column(k)), -1)
        column = r.toks[j].column if j >= 0 else _size_column(r)
        if column is None:
            return
        _rank_by_column(r, column, desc)
    r.superlative = True
    r.use(i, j)


def _size_column(r: Reading) -> Ref | None:
    try:
        return r.money_column(r.main, "")
    except CannotAnswer:
        return None


def _rank_by_column(r: Reading, ref: Ref, desc: bool) -> None:
    if ref[0] == r.main and not r.main_named and not r.groups:  # what is the highest price
        r.aggs.append(_agg("MAX" if desc else "MIN", ref))
    elif ref[0] == r.main:
        r.order.append((ref, desc))
    else:  # another table's column: add it up per main row (which customer spent the most)
        agg = _agg("SUM" if r.kind(ref) == "number" else "MAX", ref)
        r.aggs.append(agg)
        r.order.append((agg, desc))


def read_groups(r: Reading) -> None:
    for i, tok in enumerate(r.toks):
        if tok.used or tok.low not in GROUP_WORDS:
            continue
        j = r.next(i, ARTICLES | {"each", "every"})
        target = r.tok(j)
        if target is None or target.used:
            continue
        key: Grouping | None = target.column or target.table or None
        if key is None and target.low in BUCKETS:
            key = Bucket(r.time_column(r.main, target.text), BUCKETS[target.low], target.low)
        if key is None:
            continue
        if tok.low == "by" and not (r.count or r.aggs):  # products by price: a sort
            if target.column is not None:
                desc = r.direction if r.direction is not None else r.top
                r.order.append((target.column, desc))
                r.use(i, j)
            continue
        r.groups.append(key)
        r.use(i, j, i - 1 if r.word(i - 1) in _GROUP_LEADS else -1)
