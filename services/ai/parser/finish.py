"""Step 8 of a reading: the rules that need the whole reading (implicit groups and counts, 'top', default
orders and limits), then the immutable Query, with the schema facts its SQL needs looked up: join paths,
keys and the columns that name rows."""

from __future__ import annotations

from services.ai.parser.state import Grouping, Reading
from services.ai.query import Agg, Bucket, Cond, Exists, GroupKey, Join, Order, OrderKey, Query, Ref, Rows
from services.ai.schema import CannotAnswer
from services.ai.words import ASC, DESC, NOT


def refuse_unread_negations(r: Reading) -> None:
    """A not/never that no step read would silently turn the answer into its opposite: refuse."""
    left = [t.text for t in r.toks if t.low in NOT and not t.used]
    if left:
        raise CannotAnswer(
            f"I could not tell what '{left[0]}' applies to here, and ignoring it would give the "
            "opposite answer: rephrase it (for example 'orders whose status is not delivered')"
        )


def finish(r: Reading) -> None:
    """Rules that need the whole reading: implicit groups and counts, 'top', default orders and limits."""
    r.conds = _merge_conds(r.conds)
    elsewhere = any(a.ref is not None and a.ref[0] != r.main for a in r.aggs)
    if elsewhere and not r.groups and r.main_named:
        r.groups.append(r.main)  # which customer spent the most: per customer
    if r.groups and not r.aggs:
        r.count = True  # orders per status: how many in each
    if r.count:
        r.aggs.insert(0, Agg("COUNT", None, "count"))
    if r.top and not r.order:
        if not r.aggs:
            raise CannotAnswer("'top' needs something to rank by, for example 'top 5 products by price'")
        r.order.append((r.aggs[-1], DESC))
    if r.edge is not None and not r.order:
        r.order.append((_edge_column(r), r.edge))
    if r.superlative and r.limit is None and not r.main_plural:
        r.limit = 1  # the cheapest product, which customer ...
    buckets = [g for g in r.groups if isinstance(g, Bucket)]
    if buckets and not r.order:
        r.order.extend((b, ASC) for b in buckets)  # per month: in time order
    if r.groups and r.aggs and not r.order:
        r.order.append((r.aggs[-1], DESC))
    if r.distinct and r.select and not r.order:
        r.order.extend((ref, ASC) for ref in r.select)


def _merge_conds(conds: list[Cond]) -> list[Cond]:
    """customers in Berlin or Paris: equalities on one column become IN (AND of them would be empty)."""
    merged: dict[Ref, Cond] = {}
    rest: list[Cond] = []
    for cond in conds:
        if cond.op not in ("=", "IN"):
            rest.append(cond)
            continue
        previous = merged.get(cond.ref)
        values = (previous.values if previous else ()) + cond.values
        merged[cond.ref] = Cond(cond.ref, "IN" if len(values) > 1 else "=", values)
    return [*merged.values(), *rest]


def _edge_column(r: Reading) -> Ref:
    """What "first N" / "last N" go by: the main table's date, else its key, else its label."""
    time = r.index.table(r.main).time_column()
    if time:
        return (r.main, time.name)
    return (r.main, (r.key_of(r.main) or [r.label_of(r.main)])[0])


def query(r: Reading) -> Query:
    joins = _joins(r)  # first: an unlinked table is the first thing to refuse
    groups = tuple(_group(r, g) for g in r.groups)
    shown = tuple((t, r.label_of(t)) for t in r.shown)
    return Query(
        main=r.main,
        main_key=tuple(r.key_of(r.main)),
        main_named=r.main_named,
        select=tuple(r.select),
        shown=shown,
        aggs=tuple(r.aggs),
        groups=groups,
        conds=tuple(r.conds),
        exists=tuple(_exists(r, child, negated) for child, negated in r.exists),
        joins=joins,
        order=tuple(Order(key, desc) for key, desc in r.order),
        distinct=r.distinct,
        limit=r.limit,
    )


def _group(r: Reading, key: Grouping) -> GroupKey:
    if isinstance(key, str):
        return Rows(key, tuple(r.key_of(key)), r.label_of(key))
    return key


def _exists(r: Reading, child: str, negated: bool) -> Exists:
    _, mine, theirs, _ = next(link for link in r.links(r.main) if link[0] == child and link[3])
    return Exists(child, tuple(zip(mine, theirs, strict=True)), negated)


def _joins(r: Reading) -> tuple[Join, ...]:
    """The foreign-key steps from the main table to every other table the reading uses, each once."""
    joins: list[Join] = []
    for table in _tables(r):
        for step in r.index.path(r.main, table):
            if step[1] not in {j.target for j in joins}:
                joins.append(Join(*step))
    return tuple(joins)


def _tables(r: Reading) -> list[str]:
    """The other tables the reading uses, in the order they come up."""
    refs: list[Ref] = [*r.select, *(c.ref for c in r.conds), *(a.ref for a in r.aggs if a.ref)]
    refs += [_ref_of(k) for k, _ in r.order if not isinstance(k, Agg)]
    refs += [_ref_of(g) for g in r.groups if not isinstance(g, str)]
    tables = [t for t, _ in refs] + [g for g in r.groups if isinstance(g, str)] + r.shown
    return [t for i, t in enumerate(tables) if t != r.main and t not in tables[:i]]


def _ref_of(key: OrderKey | Grouping) -> Ref:
    assert not isinstance(key, Agg | str)
    return key if isinstance(key, tuple) else key.ref
