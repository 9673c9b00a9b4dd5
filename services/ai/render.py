"""SQL text and an English explanation for a Query of the embedded generator.

One text serves both backends: everything written (NULLS LAST, substr of CAST(... AS TEXT), LIKE ... ESCAPE,
calendar ranges compared as ISO text) means the same on PostgreSQL and SQLite.
"""

from __future__ import annotations

import re

from services.ai.query import Agg, Bucket, Cond, Exists, GroupKey, Join, Order, Query, Ref, Rows, singular_of
from services.ai.words import word_set


def render(query: Query) -> str:
    distinct = query.distinct or (query.fans_out and not (query.aggs or query.groups))
    parts = [
        f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(_select_items(query))}",
        f"FROM {ident(query.main)}",
    ]
    parts += [_join(join) for join in query.joins]
    where = [_cond(query, c) for c in query.conds] + [_exists(query.main, e) for e in query.exists]
    if where:
        parts.append("WHERE " + " AND ".join(where))
    groups = [item for g in query.groups for item in _group_columns(query, g)[1]]
    if groups:
        parts.append("GROUP BY " + ", ".join(groups))
    if query.order:
        parts.append("ORDER BY " + ", ".join(_order_item(query, o) for o in query.order))
    if query.limit is not None:
        parts.append(f"LIMIT {query.limit}")
    return "\n".join(parts)


def explain(query: Query) -> str:
    what = [_describe_agg(a, query.main) for a in query.aggs] or [
        ", ".join(f"{t}.{c}" for t, c in query.select) if query.select else f"the rows of {query.main}"
    ]
    text = "Shows " + " and ".join(what)
    if query.distinct:
        text += " (each different value once)"
    if query.shown:
        text += ", with " + ", ".join(f"the {label} of its {t}" for t, label in query.shown)
    if query.groups:
        text += ", for each " + ", ".join(_describe_group(g) for g in query.groups)
    for join in query.joins:
        pairs = _pairs(join.source, join.mine, join.target, join.theirs, ", ", quote=False)
        text += f", joining {join.target} on {pairs}"
    conditions = [_cond(query, c) for c in query.conds]
    conditions += [f"{'no' if e.negated else 'some'} rows in {e.child} refer to it" for e in query.exists]
    if conditions:
        text += ", where " + " and ".join(conditions)
    if query.order:
        text += ", " + ", then ".join(_describe_order(o) for o in query.order)
    if query.limit is not None:
        text += f", first {query.limit} row{'s' if query.limit != 1 else ''} only"
    return text + "."


# --- Pieces of the statement ------------------------------------------------------------------------------


def _name(query: Query, ref: Ref) -> str:
    """A column, table-qualified once the statement joins."""
    return f"{ident(ref[0])}.{ident(ref[1])}" if query.joins else ident(ref[1])


def _shown(query: Query, ref: Ref) -> str:
    """A column in the select list: columns of other tables get a table-prefixed name."""
    if ref[0] == query.main or not query.joins:
        return _name(query, ref)
    return f"{_name(query, ref)} AS {ident(f'{singular_of(ref[0])}_{ref[1]}')}"


def _agg(query: Query, agg: Agg) -> str:
    if agg.ref is not None:
        return f"{agg.func}({_name(query, agg.ref)})"
    if query.fans_out and not query.groups and len(query.main_key) == 1:
        return f"COUNT(DISTINCT {_name(query, (query.main, query.main_key[0]))})"
    return "COUNT(*)"


def _group_columns(query: Query, key: GroupKey) -> tuple[list[str], list[str]]:
    """(select items, GROUP BY items) of one group key."""
    if isinstance(key, Bucket):
        expr = f"substr(CAST({_name(query, key.ref)} AS TEXT), 1, {key.width})"
        return [f"{expr} AS {ident(key.alias)}"], [expr]
    if isinstance(key, Rows):
        label = (key.table, key.label)
        keys = [_name(query, (key.table, k)) for k in key.key if k != key.label]
        return [_shown(query, label)], [*keys, _name(query, label)]
    return [_shown(query, key)], [_name(query, key)]


def _select_items(query: Query) -> list[str]:
    if query.aggs or query.groups:
        items = [item for g in query.groups for item in _group_columns(query, g)[0]]
        return items + [f"{_agg(query, a)} AS {ident(a.alias)}" for a in query.aggs]
    star = f"{ident(query.main)}.*" if query.joins else "*"
    labels = [_shown(query, ref) for ref in query.shown]
    if not query.select:
        return [star, *labels]
    selected = [_shown(query, ref) for ref in query.select]
    if query.main_named and all(ref[0] != query.main for ref in query.select):
        return [star, *selected, *labels]
    return [*selected, *labels]


def _cond(query: Query, cond: Cond) -> str:
    column, values = _name(query, cond.ref), [literal(v) for v in cond.values]
    if cond.op in ("IN", "NOT IN"):
        return f"{column} {cond.op} ({', '.join(values)})"
    if cond.op in ("BETWEEN", "NOT BETWEEN"):
        return f"{column} {cond.op} {values[0]} AND {values[1]}"
    if cond.op.endswith(("CONTAINS", "STARTS", "ENDS")):
        word = _escape_like(str(cond.values[0]).lower())
        pattern = {"CONTAINS": f"%{word}%", "STARTS": f"{word}%", "ENDS": f"%{word}"}[cond.op.split()[-1]]
        negation = "NOT " if cond.op.startswith("NOT") else ""
        return f"lower({column}) {negation}LIKE {literal(pattern)} ESCAPE '\\'"
    return f"{column} {cond.op} {values[0]}"


def _exists(main: str, exists: Exists) -> str:
    mine, theirs = zip(*exists.pairs, strict=True)
    on = _pairs(exists.child, theirs, main, mine, " AND ")
    return f"{'NOT ' if exists.negated else ''}EXISTS (SELECT 1 FROM {ident(exists.child)} WHERE {on})"


def _join(join: Join) -> str:
    return f"JOIN {ident(join.target)} ON {_pairs(join.target, join.theirs, join.source, join.mine, ' AND ')}"


def _pairs(
    left: str, lefts: tuple[str, ...], right: str, rights: tuple[str, ...], sep: str, quote: bool = True
) -> str:
    """left.a = right.x, left.b = right.y: the column pairs of a foreign key."""
    name = ident if quote else str
    return sep.join(
        f"{name(left)}.{name(a)} = {name(right)}.{name(b)}" for a, b in zip(lefts, rights, strict=True)
    )


def _order_item(query: Query, order: Order) -> str:
    key = order.key
    expr = ident(key.alias) if isinstance(key, Agg | Bucket) else _name(query, key)
    return f"{expr} {'DESC' if order.desc else 'ASC'} NULLS LAST"


# --- Names and values -------------------------------------------------------------------------------------

RESERVED = word_set(
    """all analyse analyze and any array as asc asymmetric both case cast check collate column constraint
    create cross current_date current_time current_timestamp current_user default deferrable delete desc
    distinct do drop else end except exists false fetch for foreign from full glob grant group having ilike
    in index initially inner insert intersect into is isnull join key lateral leading left like limit
    localtime localtimestamp match natural not notnull null offset on only or order outer placing pragma
    primary references regexp replace returning right rowid select session_user set some symmetric table
    then to trailing true union unique update user using values view when where window with"""
)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def ident(name: str) -> str:
    """An identifier, quoted only when it must be (not lower-case snake_case, or a reserved word)."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


# --- The explanation's words ------------------------------------------------------------------------------

_AGG_NAMES = {
    "COUNT": "the number of",
    "SUM": "the sum of",
    "AVG": "the average of",
    "MAX": "the largest",
    "MIN": "the smallest",
}


def _describe_agg(agg: Agg, main: str) -> str:
    if agg.ref is None:
        return f"the number of {main}"
    if agg.func == "COUNT":
        return f"the number of {agg.ref[0]}"
    return f"{_AGG_NAMES[agg.func]} {agg.ref[0]}.{agg.ref[1]}"


def _describe_group(key: GroupKey) -> str:
    if isinstance(key, Bucket):
        return f"{key.alias} of {key.ref[0]}.{key.ref[1]}"
    if isinstance(key, Rows):
        return f"row of {key.table}"
    return f"{key[0]}.{key[1]}"


def _describe_order(order: Order) -> str:
    key = order.key
    name = key.alias if isinstance(key, Agg | Bucket) else f"{key[0]}.{key[1]}"
    return f"sorted by {name}, {'highest or newest' if order.desc else 'lowest or oldest'} first"
