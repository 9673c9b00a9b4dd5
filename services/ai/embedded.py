"""The embedded SQL generator: no network, no model. It reads a question word by word against the tenant's
schema and builds one SELECT, or says plainly why it cannot.

How it reads (each step marks the words it used; words left over at the end must be stored values):

1. words -> tables and columns, by name (singular or plural, multi-word, camelCase or snake_case) and by a
   small synonym list (client = customer, cost = price, revenue = amount/total, ...);
2. phrases: "how many" / "count" / "number of", "distinct", "sorted by X", "in descending order",
   "top N", "first N", "N most ...";
3. the main table: the first table named (not after "per"/"by"), else the table whose columns are named;
4. aggregates ("total X", "average X", "highest X"), superlatives ("most expensive", "latest",
   "the most orders"), groups ("per X", "by X", "for each X", "per month"), filters ("X is V", "X over N",
   "cheaper than N", "after 2024-05-01", "in 2024", "X containing V", "not V", "order 5"), other tables
   (joined along foreign keys for their name, or EXISTS / NOT EXISTS for "with" / "without" rows of a
   child table);
5. leftover words are looked up as stored values of the text columns of the main table and its foreign-key
   neighbours ("customers in Berlin", "orders of Alice"): found, they filter; not found, the question
   cannot be answered and the answer says which words were not understood. A not / never that no step
   read also makes it unanswerable: dropped, it would silently give the opposite answer.

The vocabulary is in words.py; render.py turns a finished reading into SQL text and an explanation.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from services.ai.render import Agg, Bucket, Cond, GroupKey, OrderKey, Ref, Sql, singular_of
from services.ai.schema import CannotAnswer, Column, Draft, Schema
from services.ai.words import (
    ADJECTIVES,
    AGGREGATES,
    ASC,
    BUCKETS,
    COLUMN_LINKS,
    COMPARATORS_LONGEST_FIRST,
    DESC,
    DIRECTIONS,
    FIRST_WORDS,
    GROUP_WORDS,
    MONEY,
    NOT,
    SORT_WORDS,
    STOP,
    SUPERLATIVES,
    TIME,
    WRITE_VERBS,
    Index,
    Tok,
    annotate,
    lex,
    name_key,
    word_set,
)

FindValues = Callable[[str, list[str], list[str]], Awaitable[list[tuple[str, str]]]]


TEXT_OPS = frozenset({"CONTAINS", "STARTS", "ENDS"})  # comparisons that only fit a text column
NEGATING = NOT - {"without", "no", "except", "excluding"}  # words that turn the comparison after them
_LEFTOVER_SKIP = frozenset({"the", "a", "an", "is", "are", "was", "were", "be", "been", "have", "has"})
# the words between a negation and a stored value: not in Berlin, not from Alice, never ordered by Alice
_VALUE_LINKS = frozenset({"in", "from", "by", "of", "at", "to", "for", "with"})
_VERBS = frozenset(
    {"ordered", "bought", "purchased", "placed", "made", "named", "called", "located", "based"}
)


class Reading:
    """One question read against one schema: the parts of the SELECT it asks for."""

    def __init__(self, question: str, schema: Schema) -> None:
        self.index = Index.of(schema)
        self.schema = schema
        self.toks = annotate(lex(question), self.index)
        self.main = ""
        self.main_named = False  # the question names the main table (not just its columns)
        self.main_plural = True
        self.count = False
        self.distinct = False
        self.direction: bool | None = None
        self.top = False
        self.limit: int | None = None
        self.aggs: list[Agg] = []
        self.groups: list[GroupKey] = []
        self.conds: list[Cond] = []
        self.exists: list[tuple[str, bool]] = []  # (child table, negated)
        self.shown: list[str] = []  # other tables joined for their name
        self.select: list[Ref] = []
        self.order: list[tuple[OrderKey, bool]] = []
        self.sort_at: list[int] = []  # the column words after "sorted by"
        self.edge: bool | None = None  # "first N" (ascending) / "last N" (descending)
        self.how_much: set[int] = set()
        self.superlative = False  # a superlative chose the order: a singular noun then means one row

    # -- navigation

    def word(self, i: int) -> str:
        return self.toks[i].low if 0 <= i < len(self.toks) else ""

    def next(self, i: int, skip: frozenset[str] = frozenset({"the", "a", "an"})) -> int:
        j = i + 1
        while j < len(self.toks) and (self.toks[j].used or self.toks[j].low in skip):
            j += 1
        return j

    def prev(self, i: int, skip: frozenset[str] = frozenset({"the", "a", "an"})) -> int:
        j = i - 1
        while j >= 0 and self.toks[j].low in skip:
            j -= 1
        return j

    def phrase_at(self, i: int, words: tuple[str, ...]) -> bool:
        return tuple(self.word(i + k) for k in range(len(words))) == words

    def use(self, *indexes: int) -> None:
        for i in indexes:
            if 0 <= i < len(self.toks):
                self.toks[i].used = True

    def tok(self, i: int) -> Tok | None:
        return self.toks[i] if 0 <= i < len(self.toks) else None

    # -- the schema

    def column(self, ref: Ref) -> Column:
        column = self.index.table(ref[0]).column(ref[1])
        assert column is not None
        return column

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

    # -- 1. refuse what it cannot write

    def refuse_writes(self) -> None:
        polite = word_set("please can could you i want to would like we need let us")
        first = next((t.low for t in self.toks if t.kind == "word" and t.low not in polite), "")
        if first in WRITE_VERBS:
            raise CannotAnswer(
                "this asks to change data or the schema; the embedded generator writes SELECT statements only "
                "(a language model, configured with OPENAI_KEY, can write INSERT, UPDATE and DELETE when "
                "allow_writes is set)"
            )

    # -- 2. phrases

    def read_phrases(self) -> None:
        for i, tok in enumerate(self.toks):
            if not tok.used:
                self._phrase(i, tok)

    def _phrase(self, i: int, tok: Tok) -> None:
        low, after = tok.low, self.word(i + 1)
        if low == "how" and after == "many":
            self.count = True
            self.use(i, i + 1)
        elif low == "how" and after == "much":
            self.how_much.add(i)
            self.use(i + 1)
        elif low == "count" and not tok.columns:
            self.count = True
            self.use(i, i + 1 if after == "of" else -1)
        elif low == "number" and after == "of":
            self.count = True
            self.use(i, i + 1, i - 1 if self.word(i - 1) == "total" else -1)
        elif low in ("distinct", "unique", "different"):
            self.distinct = True
            self.use(i)
        elif low in DIRECTIONS:
            self.direction = DIRECTIONS[low]
            self.use(i, i + 1 if after == "order" else -1, i - 1 if self.word(i - 1) == "in" else -1)
        elif low in FIRST_WORDS and after == "first":
            self.direction = FIRST_WORDS[low]
            self.use(i, i + 1, i - 1 if self.word(i - 1) == "most" else -1)
        elif low in SORT_WORDS and after in ("by", "on"):
            self._sort_phrase(i)
        else:
            self._limit_phrase(i, tok)

    def _sort_phrase(self, i: int) -> None:
        j = self.next(i + 1, frozenset({"the", "a", "an", "their", "its", "his", "her"}))
        target = self.tok(j)
        if target is not None and (target.columns or target.low in ("date", "time")) and not target.table:
            self.sort_at.append(j)
            self.use(i, i + 1)

    def _limit_phrase(self, i: int, tok: Tok) -> None:
        nxt = self.tok(i + 1)
        if (
            tok.low in ("top", "first", "last", "limit", "only")
            and nxt is not None
            and nxt.number is not None
        ):
            self.limit = int(nxt.number)
            self.top = self.top or tok.low == "top"
            self.edge = {"first": ASC, "last": DESC}.get(tok.low, self.edge)
            self.use(i, i + 1)
        elif tok.low == "top":
            self.top = True
            self.use(i)
        elif tok.number is not None and nxt is not None and self._counts(nxt):
            self.limit = int(tok.number)
            self.use(i)

    @staticmethod
    def _counts(tok: Tok) -> bool:
        """Whether a number before this word is how many rows to show ("3 most expensive", "5 products")."""
        return bool(tok.table) or tok.low in SUPERLATIVES or tok.low in ADJECTIVES

    # -- 3. the main table, then which table each column word means

    def choose_main(self) -> None:
        mentions = [i for i, t in enumerate(self.toks) if t.table and not t.used]
        subjects = [i for i in mentions if self.word(self.prev(i)) not in GROUP_WORDS]
        chosen = (subjects or mentions or [None])[0]
        if chosen is not None:
            tok = self.toks[chosen]
            self.main, self.main_named, self.main_plural = tok.table, True, tok.plural
            tok.used = True
            return
        scores: dict[str, int] = {}
        for tok in self.toks:
            for table in {table for table, _ in tok.columns}:
                scores[table] = scores.get(table, 0) + 1
        if not scores:
            raise CannotAnswer(
                f"none of your tables or columns is named in the question (your tables: {self.schema.names})"
            )
        best = max(scores.values())
        tied = sorted(t for t, s in scores.items() if s == best)
        if len(tied) > 1:
            raise CannotAnswer(f"the question could be about {' or '.join(tied)}: name the table")
        self.main = tied[0]

    def resolve(self) -> None:
        distance = self.index.distances(self.main)
        named = [t.table for t in self.toks if t.table]
        for i, tok in enumerate(self.toks):
            if tok.columns and not tok.table:
                tok.column = self._pick(i, tok, distance, named)

    def _pick(self, i: int, tok: Tok, distance: dict[str, int], named: list[str]) -> Ref | None:
        options = [c for c in tok.columns if c[0] in distance]
        if not options:
            return None
        # a table named next to it: "customer name", "name of the customer"
        after = self.next(i + 1) if self.word(i + 1) == "of" else -1
        for q in (i - 1, after):
            qualifier = self.tok(q)
            hit = [c for c in options if qualifier is not None and c[0] == qualifier.table]
            if hit and qualifier is not None:
                qualifier.used = True
                return hit[0]
        for table in (self.main, *named):
            hit = [c for c in options if c[0] == table]
            if hit:
                return hit[0]
        nearest = min(distance[c[0]] for c in options)
        tables = sorted({c[0] for c in options if distance[c[0]] == nearest})
        if len(tables) > 1:
            raise CannotAnswer(f"'{tok.text}' could be a column of {' or '.join(tables)}: name the table")
        return next(c for c in options if distance[c[0]] == nearest)

    def read_sorts(self) -> None:
        for j in self.sort_at:
            tok = self.toks[j]
            ref = tok.column or self.time_column(self.main, tok.text)
            self.order.append((ref, ASC if self.direction is None else self.direction))
            tok.used = True

    # -- 4. aggregates, superlatives, groups

    def read_aggregates(self) -> None:
        for i, tok in enumerate(self.toks):
            if i in self.how_much:
                j = next((k for k in range(i + 1, len(self.toks)) if self._numeric(k)), -1)
                self._aggregate(i, j, "SUM")
            elif not tok.used and tok.low in AGGREGATES:
                j = self.next(i, frozenset({"the", "a", "an", "of", "all"}))
                qualifier = self.tok(j)
                if qualifier is not None and qualifier.table:  # "total order amount"
                    j = self.next(j, frozenset({"the", "a", "an", "of"}))
                self._aggregate(i, j, AGGREGATES[tok.low])

    def _numeric(self, j: int) -> bool:
        tok = self.toks[j]
        return tok.column is not None and not tok.used and self.column(tok.column).kind == "number"

    def _aggregate(self, i: int, j: int, func: str) -> None:
        target = self.tok(j)
        if target is None or target.column is None or target.used:
            return
        kind = self.column(target.column).kind
        if func in ("SUM", "AVG") and kind != "number":
            if self.toks[i].columns:
                return  # "total" is itself a column here
            raise CannotAnswer(f"{target.column[1]} is not a number column, so it has no {func.lower()}")
        self.aggs.append(Agg(func, target.column, f"{func.lower()}_{target.column[1]}"))
        self.use(i, j)

    def read_superlatives(self) -> None:
        for i, tok in enumerate(self.toks):
            if tok.used:
                continue
            if tok.low in SUPERLATIVES and self.word(i - 1) not in ("at", "no"):  # not "at least"
                self._superlative(i, SUPERLATIVES[tok.low])
            elif tok.low in ADJECTIVES and not tok.columns:
                concept, desc = ADJECTIVES[tok.low]
                self.order.append((self.concept_column(concept, tok.text), desc))
                self.superlative = True
                self.use(i)

    def _superlative(self, i: int, desc: bool) -> None:
        j = self.next(i)
        nxt = self.tok(j)
        if nxt is not None and nxt.low in ADJECTIVES and not nxt.used:  # most expensive, least recent
            concept, adjective = ADJECTIVES[nxt.low]
            self.order.append((self.concept_column(concept, nxt.text), adjective if desc else not adjective))
        elif nxt is not None and nxt.column is not None:  # highest price
            self._rank_by_column(nxt.column, desc)
        elif nxt is not None and nxt.table and nxt.table != self.main:  # the most orders
            key = self.key_of(nxt.table)
            agg = Agg("COUNT", (nxt.table, key[0]) if key else None, f"{singular_of(nxt.table)}_count")
            self.aggs.append(agg)
            self.order.append((agg, desc))
        else:  # spent the most: the column named just before; the biggest order: its amount
            j = next((k for k in range(i - 1, max(i - 4, -1), -1) if self._unused_column(k)), -1)
            column = self.toks[j].column if j >= 0 else self._size_column()
            if column is None:
                return
            self._rank_by_column(column, desc)
        self.superlative = True
        self.use(i, j)

    def _size_column(self) -> Ref | None:
        try:
            return self.money_column(self.main, "")
        except CannotAnswer:
            return None

    def _unused_column(self, k: int) -> bool:
        return self.toks[k].column is not None and not self.toks[k].used

    def _rank_by_column(self, ref: Ref, desc: bool) -> None:
        if ref[0] == self.main and not self.main_named and not self.groups:  # what is the highest price
            func = "MAX" if desc else "MIN"
            self.aggs.append(Agg(func, ref, f"{func.lower()}_{ref[1]}"))
        elif ref[0] == self.main:
            self.order.append((ref, desc))
        else:  # another table's column: add it up per main row (which customer spent the most)
            func = "SUM" if self.column(ref).kind == "number" else "MAX"
            agg = Agg(func, ref, f"{func.lower()}_{ref[1]}")
            self.aggs.append(agg)
            self.order.append((agg, desc))

    def read_groups(self) -> None:
        for i, tok in enumerate(self.toks):
            if tok.used or tok.low not in GROUP_WORDS:
                continue
            j = self.next(i, frozenset({"the", "a", "an", "each", "every"}))
            target = self.tok(j)
            if target is None or target.used:
                continue
            key: GroupKey | None = target.column or target.table or None
            if key is None and target.low in BUCKETS:
                key = Bucket(self.time_column(self.main, target.text), BUCKETS[target.low], target.low)
            if key is None:
                continue
            if tok.low == "by" and not (self.count or self.aggs):  # products by price: a sort
                if target.column is not None:
                    desc = self.direction if self.direction is not None else self.top
                    self.order.append((target.column, desc))
                    self.use(i, j)
                continue
            self.groups.append(key)
            before = i - 1 if self.word(i - 1) in ("for", "grouped", "broken", "split", "group") else -1
            self.use(i, j, before)

    # -- 5. filters

    def read_filters(self) -> None:
        for i, tok in enumerate(self.toks):
            if tok.column is not None and not tok.used:
                self._filter_after_column(i)
        for i, tok in enumerate(self.toks):
            if not tok.used:
                self._filter_without_column(i)
        for i, tok in enumerate(self.toks):
            if tok.table:
                self._filter_key(i, tok.table)
        for i, tok in enumerate(self.toks):
            if tok.column is not None and not tok.used and self.column(tok.column).kind == "bool":
                negated = self.word(i - 1) in NOT
                self.conds.append(Cond(tok.column, "=", (not negated,)))
                self.use(i, i - 1 if negated else -1)

    def comparator_at(self, j: int) -> tuple[str, str, int] | None:
        for words, op, concept in COMPARATORS_LONGEST_FIRST:
            if self.phrase_at(j, words) and not any(self.toks[j + k].used for k in range(len(words))):
                return op, concept, len(words)
        return None

    def _filter_after_column(self, i: int) -> None:
        ref = self.toks[i].column
        assert ref is not None
        before = self._negation_before(i)  # customers not named Alice
        j = i + 1
        while j < len(self.toks) and not self.toks[j].used and self.word(j) in (COLUMN_LINKS | {"not"}):
            j += 1
        negated = (before >= 0) != _odd_nots(self.toks[i:j])
        year = self._year(j + 1) if self.word(j) in ("in", "during") else None
        if year is not None and self.column(ref).kind == "time":  # joined in 2024
            self._in_year(ref, year)
            self.use(*range(i, j + 2))
            return
        comparator = self.comparator_at(j)
        op, start = ("=", j) if comparator is None else (comparator[0], j + comparator[2])
        values, end = self.values_at(start, op)
        if not values and comparator is None and self.column(ref).kind == "text":  # the books category
            values, end = self._phrase_before(i), i + 1
        if not values:
            return
        self.add_cond(ref, _negate(op) if negated else op, values)
        self.use(*range(i, end), before)

    def _negation_before(self, i: int) -> int:
        """The index of an unused not/never just before token i ("not cheaper", "are not over"), or -1."""
        k = self.prev(i, frozenset({"the", "a", "an", "is", "are", "was", "were", "be", "been"}))
        tok = self.tok(k)
        return k if tok is not None and not tok.used and tok.low in NEGATING else -1

    def _phrase_before(self, i: int) -> tuple[object, ...]:
        words: list[Tok] = []
        k = i - 1
        while k >= 0 and self._plain(self.toks[k]) and len(words) < 4:
            words.insert(0, self.toks[k])
            k -= 1
        if not words:
            return ()
        self.use(*range(k + 1, i))
        return (" ".join(t.text for t in words),)

    def _plain(self, tok: Tok) -> bool:
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

    def values_at(self, j: int, op: str) -> tuple[tuple[object, ...], int]:
        """The value(s) starting at token j, and the index after them."""
        first, end = self._value(j)
        if first is None:
            return (), j
        if op == "BETWEEN":
            second, after = self._value(end + 1) if self.word(end) == "and" else (None, end)
            return ((first, second), after) if second is not None else ((), j)
        values = [first]
        while self.word(end) in ("or", ",") and op in ("=", "<>"):
            more, after = self._value(end + 1)
            if more is None:
                break
            values.append(more)
            end = after
        return tuple(values), end

    def _value(self, j: int) -> tuple[object | None, int]:
        tok = self.tok(j)
        if tok is None or tok.used:
            return None, j
        if tok.kind in ("quoted", "date"):
            return tok.text, j + 1
        if tok.kind == "number":
            return tok.number, j + 1
        k = j
        while k < len(self.toks) and self._plain(self.toks[k]) and k - j < 4:
            k += 1
        if k == j:
            return None, j
        return " ".join(t.text for t in self.toks[j:k]), k

    def _filter_without_column(self, i: int) -> None:
        """over 500, cheaper than 10, after 2024-05-01, in 2024: the column follows from the value."""
        tok = self.toks[i]
        year = self._year(i + 1)
        if tok.low in ("in", "during") and year is not None:
            self._in_year(self.time_column(self.main, str(year)), year)
            self.use(i, i + 1)
            return
        comparator = self.comparator_at(i)
        if comparator is None:
            return
        op, concept, length = comparator
        values, end = self.values_at(i + length, op)
        if not values:
            return
        words = " ".join(t.text for t in self.toks[i:end])
        negation = self._negation_before(i)  # products not cheaper than 100
        ref = self._column_before(i, values[0], concept) or self._implied_column(
            op, concept, values[0], words
        )
        self.add_cond(ref, _negate(op) if negation >= 0 else op, values)
        self.use(*range(i, end), negation)

    def _in_year(self, ref: Ref, year: int) -> None:
        """A calendar year as a half-open range: the same text on PostgreSQL and SQLite, dates or timestamps."""
        self.conds.append(Cond(ref, ">=", (f"{year}-01-01",)))
        self.conds.append(Cond(ref, "<", (f"{year + 1}-01-01",)))

    def _year(self, j: int) -> int | None:
        tok = self.tok(j)
        if tok is not None and tok.kind == "number" and not tok.used and "." not in tok.text:
            value = int(tok.text)
            return value if 1900 <= value <= 2200 else None
        return None

    def _column_before(self, i: int, value: object, concept: str) -> Ref | None:
        """customers who signed up after 2024-03-01: the column word a few words before the comparator."""
        dated = concept == TIME or (isinstance(value, str) and bool(re.match(r"\d{4}-\d{2}-\d{2}", value)))
        wanted = "time" if dated else "number"
        for k in range(i - 1, max(i - 4, -1), -1):
            ref = self.toks[k].column
            if ref is not None and not self.toks[k].used and self.column(ref).kind == wanted:
                self.use(k)
                return ref
        return None

    def _implied_column(self, op: str, concept: str, value: object, words: str) -> Ref:
        if concept == TIME or (isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}", value)):
            return self.time_column(self.main, words)
        if concept == MONEY:
            return self.money_column(self.main, words)
        if op in TEXT_OPS:  # notes containing hello: the table's one text column, if it has just one
            texts = [c for c in self.index.table(self.main).columns if c.kind == "text"]
            if len(texts) == 1:
                return (self.main, texts[0].name)
            choices = ", ".join(c.name for c in texts) or "none"
            raise CannotAnswer(f"which column of {self.main} should be {words}? (text columns: {choices})")
        numbers = [c for c in self.index.table(self.main).columns if c.kind == "number" and not c.primary_key]
        numbers = [c for c in numbers if not c.name.lower().endswith("_id")]
        money = [c for c in numbers if {"price", "total"} & set(name_key(c.name))]
        if len(money or numbers) == 1:
            return (self.main, (money or numbers)[0].name)
        choices = ", ".join(c.name for c in numbers) or "none"
        raise CannotAnswer(f"which column of {self.main} should be {words}? (number columns: {choices})")

    def _filter_key(self, i: int, table: str) -> None:
        """order 5, customer number 3, order #7: the row with that primary key."""
        j = i + 1 if self.word(i + 1) not in ("number", "no", "id", "#") else i + 2
        tok = self.tok(j)
        key = self.key_of(table)
        if tok is None or tok.used or tok.kind != "number" or len(key) != 1:
            return
        self.conds.append(Cond((table, key[0]), "=", (tok.number,)))
        self.use(i + 1, j)

    def add_cond(self, ref: Ref, op: str, values: tuple[object, ...]) -> None:
        kind = self.column(ref).kind
        year = values[0] if len(values) == 1 else None
        if kind == "time" and op in (">", ">=", "<", "<=") and _is_year(year):
            assert isinstance(year, int)
            op, values = _year_bound(op, year)  # created before 2024: before 2024-01-01, not before "2024"
        if kind == "text":
            values = tuple(str(v) for v in values)
        if op in ("=", "<>") and len(values) > 1:
            op = "IN" if op == "=" else "NOT IN"
        self.conds.append(Cond(ref, op, values))

    # -- 6. other tables, the columns to show

    def read_other_tables(self) -> None:
        for i, tok in enumerate(self.toks):
            if not tok.table or tok.used or tok.table == self.main:
                continue
            before = {self.word(k) for k in range(i - 3, i)}
            negated = bool(before & {"without", "no", "never", "not", "zero"})
            self.use(*(k for k in range(max(i - 3, 0), i) if self.word(k) in NOT))
            links = before & {"with", "have", "has", "having", "had", "who", "that", "without", "no"}
            listed = before & {"their", "and", "along", "including", "plus", "its"}
            if self._is_child(tok.table) and links and not listed:
                self.exists.append((tok.table, negated))
            else:
                self.shown.append(tok.table)
            tok.used = True

    def _one_per_row(self, table: str) -> bool:
        """Whether each row of the main table has at most one row of `table` (itself, or a parent)."""
        return table == self.main or any(
            n == table and not child for n, _, _, child in self.index.links.get(self.main, ())
        )

    def _is_child(self, table: str) -> bool:
        return any(n == table and child for n, _, _, child in self.index.links.get(self.main, ()))

    def read_projection(self) -> None:
        for tok in self.toks:
            if tok.column is not None and not tok.used:
                if tok.column not in self.select:
                    self.select.append(tok.column)
                tok.used = True
        only_columns = self.select and not self.main_named and not (self.aggs or self.count or self.groups)
        if only_columns and all(t.plural for t in self.toks if t.column in self.select):
            self.distinct = True  # "list all categories": the different values
        for tok in self.toks:
            if tok.low in ("date", "time", "when") and not tok.used:
                tok.used = True
                ref = self.time_column(self.main, tok.text)
                if self.select and ref not in self.select:
                    self.select.append(ref)

    # -- 7. leftover words: stored values

    async def read_values(self, find: FindValues) -> None:
        phrases = self._leftovers()
        pending = [
            c for c in self.conds if c.op in ("=", "<>", "IN", "NOT IN") and self.column(c.ref).kind == "text"
        ]
        if not phrases and not pending:
            return
        found = await self._lookup(phrases, pending, find)
        self.conds = [_stored(c, found) for c in self.conds]
        unknown: list[str] = []
        for text, words, negated in phrases:
            whole = found.get((None, text.lower()))
            hits = [whole] if whole else [found.get((None, w.lower())) for w in words]
            missing = [w for w, hit in zip(words, hits, strict=False) if hit is None] if not whole else []
            if missing:
                unknown.extend(missing)
                continue
            for hit in hits:
                assert hit is not None
                if negated and not self._one_per_row(hit[0]):
                    raise CannotAnswer(
                        f"the negated '{text}' would need {self.main} with no matching {hit[0]}: "
                        "the embedded generator cannot write that yet, so it does not guess"
                    )
                self.add_cond((hit[0], hit[1]), "<>" if negated else "=", (hit[2],))
        if unknown:
            searched = sorted(self.index.distances(self.main, 2))
            raise CannotAnswer(
                f"I cannot tell what {', '.join(repr(u) for u in unknown)} means here: it is not a table, "
                f"column or stored value of {', '.join(searched)} (your tables: {self.schema.names})"
            )

    def _leftovers(self) -> list[tuple[str, list[str], bool]]:
        phrases: list[tuple[str, list[str], bool]] = []
        i = 0
        while i < len(self.toks):
            tok = self.toks[i]
            if tok.used or tok.kind == "op" or (tok.kind == "word" and (tok.low in STOP or tok.low in NOT)):
                i += 1
                continue
            if tok.kind in ("number", "date"):
                raise CannotAnswer(
                    f"I do not know what {tok.text} refers to here: name its column (for example '<column> over {tok.text}')"
                )
            start, words = i, []
            while i < len(self.toks) and (self.toks[i].kind == "quoted" or self._plain(self.toks[i])):
                words.append(self.toks[i].text)
                i += 1
                if self.toks[i - 1].kind == "quoted":
                    break
            if not words:  # a column word of an unreachable table
                words.append(tok.text)
                i += 1
            before = self.prev(start, _LEFTOVER_SKIP)
            if self.word(before) in _VALUE_LINKS:  # not in Berlin, not from Alice, never ordered by Alice
                before = self.prev(before, _LEFTOVER_SKIP | _VERBS)
            negated = self.word(before) in NOT
            if negated:
                self.use(before)
            phrases.append((" ".join(words), words, negated))
        return phrases

    async def _lookup(
        self, phrases: list[tuple[str, list[str], bool]], pending: list[Cond], find: FindValues
    ) -> dict[tuple[Ref | None, str], tuple[str, str, str]]:
        """(column or None for any, lower-case phrase) -> (table, column, stored value)."""
        found: dict[tuple[Ref | None, str], tuple[str, str, str]] = {}
        wanted = {p.lower() for text, words, _ in phrases for p in (text, *words)}
        distance = self.index.distances(self.main, 2)
        for table in sorted(distance, key=lambda t: (distance[t], t)):
            columns = [c.name for c in self.index.table(table).columns if c.kind == "text"]
            asked = sorted(wanted - {k[1] for k in found if k[0] is None})
            for cond in pending:
                if cond.ref[0] == table:
                    asked.extend(str(v).lower() for v in cond.values)
            if not columns or not asked:
                continue
            for column, value in await find(table, columns, sorted(set(asked))):
                hit = (table, column, value)
                found.setdefault(((table, column), value.lower()), hit)
                if value.lower() in wanted:
                    found.setdefault((None, value.lower()), hit)
        return found

    def _merge_conds(self) -> None:
        """customers in Berlin or Paris: equalities on one column become IN (AND of them would be empty)."""
        merged: dict[tuple[Ref, str], Cond] = {}
        rest: list[Cond] = []
        for cond in self.conds:
            if cond.op not in ("=", "IN"):
                rest.append(cond)
                continue
            previous = merged.get((cond.ref, "="))
            values = (previous.values if previous else ()) + cond.values
            merged[(cond.ref, "=")] = Cond(cond.ref, "IN" if len(values) > 1 else "=", values)
        self.conds = [*merged.values(), *rest]

    # -- 8. the statement

    def finish(self) -> None:
        """Rules that need the whole reading: implicit groups and counts, 'top', default limits."""
        self._merge_conds()
        elsewhere = any(a.ref is not None and a.ref[0] != self.main for a in self.aggs)
        if elsewhere and not self.groups and self.main_named:
            self.groups.append(self.main)  # which customer spent the most: per customer
        if self.groups and not self.aggs:
            self.count = True  # orders per status: how many in each
        if self.count:
            self.aggs.insert(0, Agg("COUNT", None, "count"))
        if self.top and not self.order:
            if not self.aggs:
                raise CannotAnswer("'top' needs something to rank by, for example 'top 5 products by price'")
            self.order.append((self.aggs[-1], DESC))
        if self.edge is not None and not self.order:
            time = self.index.table(self.main).time_column()
            ref = (
                (self.main, time.name)
                if time
                else (self.main, (self.key_of(self.main) or [self.label_of(self.main)])[0])
            )
            self.order.append((ref, self.edge))
        if self.superlative and self.limit is None and not self.main_plural:
            self.limit = 1  # the cheapest product, which customer ...
        buckets = [g for g in self.groups if isinstance(g, Bucket)]
        if buckets and not self.order:
            self.order.extend((b, ASC) for b in buckets)  # per month: in time order
        if self.groups and self.aggs and not self.order:
            self.order.append((self.aggs[-1], DESC))
        if self.distinct and self.select and not self.order:
            self.order.extend((ref, ASC) for ref in self.select)

    def refuse_unread_negations(self) -> None:
        """A not/never that no step read would silently turn the answer into its opposite: refuse."""
        left = [t.text for t in self.toks if t.low in NOT and not t.used]
        if left:
            raise CannotAnswer(
                f"I could not tell what '{left[0]}' applies to here, and ignoring it would give the "
                "opposite answer: rephrase it (for example 'orders whose status is not delivered')"
            )

    def draft(self) -> Draft:
        self.refuse_unread_negations()
        self.finish()
        sql = Sql(self)
        return Draft(sql.render(), sql.explain())


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


def _stored(cond: Cond, found: dict[tuple[Ref | None, str], tuple[str, str, str]]) -> Cond:
    """A typed value replaced by the stored one it equals ignoring case ('paris' -> 'Paris')."""
    values = tuple(found.get((cond.ref, str(v).lower()), (None, None, v))[2] for v in cond.values)
    return Cond(cond.ref, cond.op, values)


async def generate(question: str, schema: Schema, find: FindValues) -> Draft:
    """One SELECT answering `question` on `schema`; CannotAnswer when the words do not map onto it."""
    if not schema.tables:
        raise CannotAnswer("your tenant has no tables yet, so there is nothing to query")
    reading = Reading(question, schema)
    reading.refuse_writes()
    reading.read_phrases()
    reading.choose_main()
    reading.resolve()
    reading.read_sorts()
    reading.read_aggregates()
    reading.read_superlatives()
    reading.read_groups()
    reading.read_filters()
    reading.read_other_tables()
    reading.read_projection()
    await reading.read_values(find)
    return reading.draft()
