"""SQL text and English explanations for a finished Reading of the embedded generator."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.ai.schema import singular
from services.ai.words import word_set

if TYPE_CHECKING:
    from services.ai.embedded import Reading

# --- What the question asks for -------------------------------------------------------------------------

Ref = tuple[str, str]  # (table, column)


@dataclass(frozen=True, slots=True)
class Agg:
    func: str  # COUNT, SUM, AVG, MAX, MIN
    ref: Ref | None  # None: COUNT(*)
    alias: str


@dataclass(frozen=True, slots=True)
class Cond:
    ref: Ref
    op: str  # = <> > >= < <= BETWEEN IN CONTAINS STARTS ENDS
    values: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Bucket:
    ref: Ref
    width: int  # characters of the ISO timestamp: 4 year, 7 month, 10 day
    alias: str


GroupKey = Ref | Bucket | str  # a column, a time bucket, or a whole table (its key and name)
OrderKey = Ref | Agg | Bucket


class Sql:
    """Renders a finished Reading as SQL text and as an English explanation."""

    def __init__(self, reading: Reading) -> None:
        self.r = reading
        self.joins: list[tuple[str, str, tuple[str, ...], tuple[str, ...], bool]] = []
        for table in self._tables():
            for step in reading.index.path(reading.main, table):
                if step[1] not in {j[1] for j in self.joins}:
                    self.joins.append(step)
        self.qualified = bool(self.joins)
        self.fans_out = any(child for *_, child in self.joins)  # a child table repeats the main rows

    def _tables(self) -> list[str]:
        r = self.r
        refs: list[Ref] = [*r.select, *(c.ref for c in r.conds), *(a.ref for a in r.aggs if a.ref)]
        refs += [k if isinstance(k, tuple) else k.ref for k, _ in r.order if not isinstance(k, Agg)]
        refs += [g if isinstance(g, tuple) else g.ref for g in r.groups if not isinstance(g, str)]
        tables = [t for t, _ in refs] + [g for g in r.groups if isinstance(g, str)] + r.shown
        return [t for i, t in enumerate(tables) if t != r.main and t not in tables[:i]]

    # -- pieces

    def name(self, ref: Ref) -> str:
        return f"{ident(ref[0])}.{ident(ref[1])}" if self.qualified else ident(ref[1])

    def shown(self, ref: Ref) -> str:
        """A column in the select list: columns of other tables get a table-prefixed name."""
        if ref[0] == self.r.main or not self.qualified:
            return self.name(ref)
        return f"{self.name(ref)} AS {ident(f'{singular_of(ref[0])}_{ref[1]}')}"

    def agg(self, agg: Agg) -> str:
        if agg.ref is not None:
            return f"{agg.func}({self.name(agg.ref)})"
        key = self.r.key_of(self.r.main)
        if self.fans_out and not self.r.groups and len(key) == 1:
            return f"COUNT(DISTINCT {self.name((self.r.main, key[0]))})"
        return "COUNT(*)"

    def group_columns(self, key: GroupKey) -> tuple[list[str], list[str]]:
        """(select items, GROUP BY items) of one group key."""
        if isinstance(key, Bucket):
            expr = f"substr(CAST({self.name(key.ref)} AS TEXT), 1, {key.width})"
            return [f"{expr} AS {ident(key.alias)}"], [expr]
        if isinstance(key, str):
            label = (key, self.r.label_of(key))
            keys = [self.name((key, k)) for k in self.r.key_of(key) if k != label[1]]
            return [self.shown(label)], [*keys, self.name(label)]
        return [self.shown(key)], [self.name(key)]

    def cond(self, cond: Cond) -> str:
        column, values = self.name(cond.ref), [literal(v) for v in cond.values]
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

    def exists(self, child: str, negated: bool) -> str:
        main = self.r.main
        link = next(step for step in self.r.index.links[main] if step[0] == child and step[3])
        _, mine, theirs, _ = link
        on = " AND ".join(
            f"{ident(child)}.{ident(t)} = {ident(main)}.{ident(m)}" for m, t in zip(mine, theirs, strict=True)
        )
        return f"{'NOT ' if negated else ''}EXISTS (SELECT 1 FROM {ident(child)} WHERE {on})"

    def join(self, step: tuple[str, str, tuple[str, ...], tuple[str, ...], bool]) -> str:
        source, target, mine, theirs, _ = step
        on = " AND ".join(
            f"{ident(target)}.{ident(t)} = {ident(source)}.{ident(m)}"
            for m, t in zip(mine, theirs, strict=True)
        )
        return f"JOIN {ident(target)} ON {on}"

    def order_item(self, key: OrderKey, desc: bool) -> str:
        expr = ident(key.alias) if isinstance(key, Agg | Bucket) else self.name(key)
        return f"{expr} {'DESC' if desc else 'ASC'} NULLS LAST"

    def select_items(self) -> list[str]:
        r = self.r
        if r.aggs or r.groups:
            items = [item for g in r.groups for item in self.group_columns(g)[0]]
            return items + [f"{self.agg(a)} AS {ident(a.alias)}" for a in r.aggs]
        star = f"{ident(r.main)}.*" if self.qualified else "*"
        labels = [self.shown((t, r.label_of(t))) for t in r.shown]
        if not r.select:
            return [star, *labels]
        if r.main_named and all(ref[0] != r.main for ref in r.select):
            return [star, *(self.shown(ref) for ref in r.select), *labels]
        return [*(self.shown(ref) for ref in r.select), *labels]

    # -- the whole

    def render(self) -> str:
        r = self.r
        distinct = r.distinct or (self.fans_out and not (r.aggs or r.groups))
        parts = [
            f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(self.select_items())}",
            f"FROM {ident(r.main)}",
        ]
        parts += [self.join(step) for step in self.joins]
        where = [self.cond(c) for c in r.conds] + [self.exists(t, n) for t, n in r.exists]
        if where:
            parts.append("WHERE " + " AND ".join(where))
        groups = [item for g in r.groups for item in self.group_columns(g)[1]]
        if groups:
            parts.append("GROUP BY " + ", ".join(groups))
        if r.order:
            parts.append("ORDER BY " + ", ".join(self.order_item(k, d) for k, d in r.order))
        if r.limit is not None:
            parts.append(f"LIMIT {r.limit}")
        return "\n".join(parts)

    def explain(self) -> str:
        r = self.r
        what = [_describe_agg(a, r.main) for a in r.aggs] or [
            ", ".join(f"{t}.{c}" for t, c in r.select) if r.select else f"the rows of {r.main}"
        ]
        text = "Shows " + " and ".join(what)
        if r.distinct:
            text += " (each different value once)"
        if r.shown:
            text += ", with " + ", ".join(f"the {r.label_of(t)} of its {t}" for t in r.shown)
        if r.groups:
            text += ", for each " + ", ".join(_describe_group(g) for g in r.groups)
        for source, target, mine, theirs, _ in self.joins:
            pairs = ", ".join(f"{source}.{m} = {target}.{t}" for m, t in zip(mine, theirs, strict=True))
            text += f", joining {target} on {pairs}"
        conditions = [self.cond(c) for c in r.conds]
        conditions += [f"{'no' if n else 'some'} rows in {t} refer to it" for t, n in r.exists]
        if conditions:
            text += ", where " + " and ".join(conditions)
        if r.order:
            text += ", " + ", then ".join(_describe_order(k, d) for k, d in r.order)
        if r.limit is not None:
            text += f", first {r.limit} row{'s' if r.limit != 1 else ''} only"
        return text + "."


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


def singular_of(table: str) -> str:
    """orders -> order, order_items -> order_item: names for the columns of other tables."""
    head, sep, last = table.rpartition("_")
    return f"{head}{sep}{singular(last.lower())}"


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


def _describe_agg(agg: Agg, main: str) -> str:
    if agg.ref is None:
        return f"the number of {main}"
    names = {"COUNT": "the number of", "SUM": "the sum of", "AVG": "the average of", "MAX": "the largest"}
    names["MIN"] = "the smallest"
    if agg.func == "COUNT":
        return f"the number of {agg.ref[0]}"
    return f"{names[agg.func]} {agg.ref[0]}.{agg.ref[1]}"


def _describe_group(key: GroupKey) -> str:
    if isinstance(key, Bucket):
        return f"{key.alias} of {key.ref[0]}.{key.ref[1]}"
    if isinstance(key, str):
        return f"row of {key}"
    return f"{key[0]}.{key[1]}"


def _describe_order(key: OrderKey, desc: bool) -> str:
    name = key.alias if isinstance(key, Agg | Bucket) else f"{key[0]}.{key[1]}"
    return f"sorted by {name}, {'highest or newest' if desc else 'lowest or oldest'} first"
