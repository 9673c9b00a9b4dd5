"""What a question asks for, as the embedded generator's parser hands it to the renderer: immutable values
that name tables and columns only, with every schema fact the SQL needs (join paths, keys, labels) already
looked up, so rendering needs neither the schema nor the question."""

from __future__ import annotations

from dataclasses import dataclass

from services.ai.schema import singular

Ref = tuple[str, str]  # (table, column)


@dataclass(frozen=True, slots=True)
class Agg:
    func: str  # COUNT, SUM, AVG, MAX, MIN
    ref: Ref | None  # None: COUNT(*)
    alias: str


@dataclass(frozen=True, slots=True)
class Cond:
    ref: Ref
    op: str  # = <> > >= < <= BETWEEN IN CONTAINS STARTS ENDS, and NOT forms of the last five
    values: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Bucket:
    ref: Ref
    width: int  # characters of the ISO timestamp: 4 year, 7 month, 10 day
    alias: str


@dataclass(frozen=True, slots=True)
class Rows:
    """A whole table as a group key: one group per row, shown by its label column."""

    table: str
    key: tuple[str, ...]  # primary key columns
    label: str


GroupKey = Ref | Bucket | Rows
OrderKey = Ref | Agg | Bucket


@dataclass(frozen=True, slots=True)
class Order:
    key: OrderKey
    desc: bool


@dataclass(frozen=True, slots=True)
class Join:
    """One foreign-key step away from the main table."""

    source: str
    target: str
    mine: tuple[str, ...]  # the source's columns
    theirs: tuple[str, ...]  # the target's columns
    child: bool  # the target refers to the source: joining it repeats the source's rows


@dataclass(frozen=True, slots=True)
class Exists:
    """Rows of the main table with (or, negated, without) a row of a child table referring to them."""

    child: str
    pairs: tuple[tuple[str, str], ...]  # (main table column, child column)
    negated: bool


@dataclass(frozen=True, slots=True)
class Query:
    """One SELECT: the main table, what to show of it, and how its rows are picked, grouped and sorted."""

    main: str
    main_key: tuple[str, ...]
    main_named: bool  # the question names the main table, not only its columns
    select: tuple[Ref, ...] = ()
    shown: tuple[Ref, ...] = ()  # the label columns of other tables joined for their name
    aggs: tuple[Agg, ...] = ()
    groups: tuple[GroupKey, ...] = ()
    conds: tuple[Cond, ...] = ()
    exists: tuple[Exists, ...] = ()
    joins: tuple[Join, ...] = ()
    order: tuple[Order, ...] = ()
    distinct: bool = False
    limit: int | None = None

    @property
    def fans_out(self) -> bool:
        """A joined child table repeats the main table's rows."""
        return any(join.child for join in self.joins)


def singular_of(table: str) -> str:
    """orders -> order, order_items -> order_item: names for the columns of other tables."""
    head, sep, last = table.rpartition("_")
    return f"{head}{sep}{singular(last.lower())}"
