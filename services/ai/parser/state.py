"""The reading of one question against one schema while the parser's steps run: the tokens (each step marks
the ones it used) and the parts of the SELECT found so far. Only the parser sees it; what it hands on is the
immutable Query that finish.py builds from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.ai.query import Agg, Bucket, Cond, OrderKey, Ref
from services.ai.schema import CannotAnswer, Column, Schema
from services.ai.words import NOT, STOP, TIME, Index, Tok, annotate, lex, name_key

Grouping = Ref | Bucket | str  # a column, a time bucket, or a whole table (by name; finish.py looks it up)
ARTICLES = frozenset({"the", "a", "an"})


@dataclass
class Reading:
    schema: Schema
    index: Index
    toks: list[Tok]
    main: str = ""
    main_named: bool = False  # the question names the main table (not just its columns)
    main_plural: bool = True
    count: bool = False
    distinct: bool = False
    direction: bool | None = None
    top: bool = False
    limit: int | None = None
    aggs: list[Agg] = field(default_factory=list)
    groups: list[Grouping] = field(default_factory=list)
    conds: list[Cond] = field(default_factory=list)
    exists: list[tuple[str, bool]] = field(default_factory=list)  # (child table, negated)
    shown: list[str] = field(default_factory=list)  # other tables joined for their name
    select: list[Ref] = field(default_factory=list)
    order: list[tuple[OrderKey, bool]] = field(default_factory=list)
    sort_at: list[int] = field(default_factory=list)  # the column words after "sorted by"
    edge: bool | None = None  # "first N" (ascending) / "last N" (descending)
    how_much: set[int] = field(default_factory=set)
    superlative: bool = False  # a superlative chose the order: a singular noun then means one row

    @classmethod
    def of(cls, question: str, schema: Schema) -> Reading:
        index = Index.of(schema)
        return cls(schema, index, annotate(lex(question), index))

    # -- the tokens

    def word(self, i: int) -> str:
        return self.toks[i].low if 0 <= i < len(self.toks) else ""

    def tok(self, i: int) -> Tok | None:
        return self.toks[i] if 0 <= i < len(self.toks) else None

    def next(self, i: int, skip: frozenset[str] = ARTICLES) -> int:
        """The next unused token after i that is not a word of `skip`."""
        j = i + 1
        while j < len(self.toks) and (self.toks[j].used or self.toks[j].low in skip):
            j += 1
        return j

    def prev(self, i: int, skip: frozenset[str] = ARTICLES) -> int:
        j = i - 1
        while j >= 0 and self.toks[j].low in skip:
            j -= 1
        return j

    def phrase_at(self, i: int, words: tuple[str, ...]) -> bool:
        return tuple(self.word(i + k) for k in range(len(words))) == words

    def use(self, *indexes: int) -> None:
        """Marks tokens as read (-1 and other indexes outside the question are ignored)."""
        for i in indexes:
            if 0 <= i < len(self.toks):
                self.toks[i].used = True

    def unused_column(self, k: int) -> bool:
        return self.toks[k].column is not None and not self.toks[k].used

    @staticmethod
    def plain(tok: Tok) -> bool:
        """A word that may be (part of) a stored value: not a name, not a filler, not used."""
        return (
            tok.kind == "word"
            and not tok.used
            and not tok.table
            and tok.column is None
            and tok.low not in STOP
            and tok.low not in NOT
            and tok.number is None
        )

    # -- the schema

    def column(self, ref: Ref) -> Column:
        column = self.index.table(ref[0]).column(ref[1])
        assert column is not None
        return column

    def kind(self, ref: Ref) -> str:
        return self.column(ref).kind

    def time_column(self, table: str, word: str) -> Ref:
        column = self.index.table(table).time_column()
        if column is None:
            raise CannotAnswer(f"{table} has no date or time column, so '{word}' has nothing to go by")
        return (table, column.name)

    def money_column(self, table: str, word: str) -> Ref:
        numbers = [c for c in self.index.table(table).columns if c.kind == "number" and not c.primary_key]
        for concept in ("price", "total"):
            hit = next((c for c in numbers if concept in name_key(c.name)), None)
            if hit is not None:
                return (table, hit.name)
        raise CannotAnswer(f"{table} has no price or amount column for '{word}'")

    def concept_column(self, concept: str, word: str) -> Ref:
        """The main table's column for a concept word: its date for 'latest', its price for 'cheapest'."""
        if concept == TIME:
            return self.time_column(self.main, word)
        return self.money_column(self.main, word)

    def key_of(self, table: str) -> list[str]:
        return list(self.index.table(table).primary_key)

    def label_of(self, table: str) -> str:
        label = self.index.table(table).label_column()
        if label is None:
            raise CannotAnswer(f"{table} has no columns, so nothing names its rows")
        return label.name

    def links(self, table: str) -> list[tuple[str, tuple[str, ...], tuple[str, ...], bool]]:
        return self.index.links.get(table, [])
