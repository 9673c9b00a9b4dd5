"""The embedded generator's vocabulary: the words of questions it understands, and the tenant's schema
indexed by the words that name its tables and columns."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from services.ai.schema import CannotAnswer, Schema, Table, canonical, identifier_words, is_plural

# --- Words ----------------------------------------------------------------------------------------------


def word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP = word_set(
    """a an the of in on at for to from with by and or me my our we us i you your please show list display
    give get find fetch return tell see view print what which who whom whose where is are was were be been
    being there all every any some do does did have has had having that this these those it its their them
    they can could would should will want need know much many record records row rows entry entries data
    info information detail details place placed make made makes bought ordered purchased belong belongs
    only just also along including together currently right now ever so far as how got than each per
    whole entire complete full everything anything exist exists existing available up"""
)
NOT = frozenset({"not", "never", "except", "excluding", "without", "no", "isn't", "aren't", "non"})
NUMBER_WORDS = {
    word: n
    for n, word in enumerate(
        (
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
        )
    )
}
WRITE_VERBS = word_set(
    "delete remove drop insert add update change modify set create truncate alter rename grant revoke "
    "replace erase wipe purge"
)
FILLER_KEY = frozenset({"at", "on", "of"})  # created_at is "created"; "price of" is "price"
STRUCTURAL = frozenset(
    {"by", "per", "of", "in", "on", "the", "a", "an", "and", "or", "to", "is", "are", "with"}
)
AGGREGATES = {
    "total": "SUM",
    "sum": "SUM",
    "average": "AVG",
    "avg": "AVG",
    "mean": "AVG",
    "maximum": "MAX",
    "max": "MAX",
    "minimum": "MIN",
    "min": "MIN",
}
DESC, ASC = True, False
SUPERLATIVES = {
    "most": DESC,
    "highest": DESC,
    "largest": DESC,
    "biggest": DESC,
    "greatest": DESC,
    "least": ASC,
    "lowest": ASC,
    "smallest": ASC,
    "fewest": ASC,
}
TIME, MONEY = "time", "money"
ADJECTIVES = {
    "expensive": (MONEY, DESC),
    "priciest": (MONEY, DESC),
    "cheapest": (MONEY, ASC),
    "newest": (TIME, DESC),
    "latest": (TIME, DESC),
    "recent": (TIME, DESC),
    "last": (TIME, DESC),
    "oldest": (TIME, ASC),
    "earliest": (TIME, ASC),
    "first": (TIME, ASC),
}
DIRECTIONS = {
    "descending": DESC,
    "desc": DESC,
    "decreasing": DESC,
    "reverse": DESC,
    "ascending": ASC,
    "asc": ASC,
    "increasing": ASC,
    "alphabetical": ASC,
    "alphabetically": ASC,
}
FIRST_WORDS = {
    "highest": DESC,
    "largest": DESC,
    "biggest": DESC,
    "newest": DESC,
    "latest": DESC,
    "recent": DESC,
    "lowest": ASC,
    "smallest": ASC,
    "oldest": ASC,
    "earliest": ASC,
}
SORT_WORDS = frozenset({"sort", "sorted", "order", "ordered", "rank", "ranked", "arrange", "arranged"})
GROUP_WORDS = frozenset({"per", "each", "every", "by"})
BUCKETS = {"year": 4, "month": 7, "day": 10, "date": 10}
# words | operator | concept: the concept names the column when the question does not (money: its price or
# amount, time: its date). Phrases are tried longest first, then in this order.
_COMPARATOR_TABLE = """
    greater than or equal to | >=       |
    more than or equal to    | >=       |
    less than or equal to    | <=       |
    at least                 | >=       |
    at most                  | <=       |
    no more than             | <=       |
    no less than             | >=       |
    more expensive than      | >        | money
    less expensive than      | <        | money
    cheaper than             | <        | money
    pricier than             | >        | money
    older than               | <        | time
    newer than               | >        | time
    earlier than             | <        | time
    later than               | >        | time
    more than                | >        |
    greater than             | >        |
    higher than              | >        |
    larger than              | >        |
    bigger than              | >        |
    over                     | >        |
    above                    | >        |
    exceeding                | >        |
    less than                | <        |
    fewer than               | <        |
    lower than               | <        |
    smaller than             | <        |
    under                    | <        |
    below                    | <        |
    after                    | >        | time
    since                    | >=       | time
    before                   | <        | time
    until                    | <=       | time
    between                  | BETWEEN  |
    not equal to             | <>       |
    equal to                 | =        |
    equals                   | =        |
    containing               | CONTAINS |
    contains                 | CONTAINS |
    contain                  | CONTAINS |
    like                     | CONTAINS |
    starting with            | STARTS   |
    starts with              | STARTS   |
    beginning with           | STARTS   |
    begins with              | STARTS   |
    ending with              | ENDS     |
    ends with                | ENDS     |
    ending in                | ENDS     |
    >=                       | >=       |
    <=                       | <=       |
    >                        | >        |
    <                        | <        |
    !=                       | <>       |
    <>                       | <>       |
    =                        | =        |
"""
COMPARATORS: tuple[tuple[tuple[str, ...], str, str], ...] = tuple(
    (tuple(words.split()), op.strip(), concept.strip())
    for words, op, concept in (line.split("|") for line in _COMPARATOR_TABLE.strip().splitlines())
)
COLUMN_LINKS = frozenset({"is", "are", "was", "were", "be", "of", ":", "equal", "to", "the"})

_LEX = re.compile(
    r"""'(?P<single>[^']*)'|"(?P<double>[^"]*)"|“(?P<curly>[^”]*)”
      |(?P<date>\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?)
      |(?P<number>\d+(?:\.\d+)?)(?![\w.])
      |(?P<op>[<>]=?|!=|<>|=)
      |(?P<word>[^\W\d_](?:[\w.@+'-]*\w)?)""",
    re.VERBOSE,
)


@dataclass(slots=True)
class Tok:
    """One word (or multi-word name) of the question and what it names."""

    text: str
    kind: str  # word | quoted | number | date | op
    table: str = ""  # the table it names
    columns: tuple[tuple[str, str], ...] = ()  # the columns it may name
    column: tuple[str, str] | None = None  # the column it names, once resolved
    used: bool = False
    plural: bool = False

    @property
    def low(self) -> str:
        return self.text.lower()

    @property
    def number(self) -> float | int | None:
        if self.kind == "number":
            return float(self.text) if "." in self.text else int(self.text)
        return NUMBER_WORDS.get(self.low) if self.kind == "word" else None


def lex(question: str) -> list[Tok]:
    question = re.sub(r"(\w)'s\b", r"\1", question)  # the customer's name -> the customer name
    tokens = []
    for match in _LEX.finditer(question):
        kind = match.lastgroup or "word"
        if kind in ("single", "double", "curly"):
            tokens.append(Tok(match.group(kind), "quoted"))
        else:
            tokens.append(Tok(match.group(), kind))
    return tokens


# --- The schema, indexed by words -----------------------------------------------------------------------


def name_key(name: str) -> tuple[str, ...]:
    return tuple(w for w in identifier_words(name) if w not in FILLER_KEY)


@dataclass
class Index:
    schema: Schema
    tables: dict[tuple[str, ...], str] = field(default_factory=dict)
    columns: dict[tuple[str, ...], list[tuple[str, str]]] = field(default_factory=dict)
    partial: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # table -> [(neighbour, this table's columns, the neighbour's columns, the neighbour is the child)]
    links: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...], bool]]] = field(default_factory=dict)

    @classmethod
    def of(cls, schema: Schema) -> Index:
        index = cls(schema)
        for table in schema.tables:
            index.tables.setdefault(name_key(table.name), table.name)
            for column in table.columns:
                key = name_key(column.name)
                index.columns.setdefault(key, []).append((table.name, column.name))
                if len(key) > 1 and key[-1] != "id":  # "price" also names unit_price
                    index.partial.setdefault(key[-1], []).append((table.name, column.name))
            for fk in table.foreign_keys:
                parent = schema.table(fk.table)
                if parent is None or parent.name == table.name:
                    continue  # self references are not followed
                index.links.setdefault(table.name, []).append((parent.name, fk.columns, fk.references, False))
                index.links.setdefault(parent.name, []).append((table.name, fk.references, fk.columns, True))
        return index

    def literal(self, word: str) -> bool:
        """Whether a table or column is called exactly `word`."""
        return any(t.name.lower() == word or t.column(word) for t in self.schema.tables)

    def table(self, name: str) -> Table:
        table = self.schema.table(name)
        assert table is not None
        return table

    def distances(self, start: str, depth: int = 3) -> dict[str, int]:
        seen = {start: 0}
        queue = deque([start])
        while queue:
            current = queue.popleft()
            if seen[current] >= depth:
                continue
            for neighbour, *_ in self.links.get(current, ()):
                if neighbour not in seen:
                    seen[neighbour] = seen[current] + 1
                    queue.append(neighbour)
        return seen

    def path(self, start: str, goal: str) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...], bool]]:
        """Joins from start to goal: (from, to, from columns, to columns, to is a child of from)."""
        previous: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], bool]] = {}
        seen, queue = {start}, deque([start])
        while queue:
            current = queue.popleft()
            for neighbour, mine, theirs, child in self.links.get(current, ()):
                if neighbour not in seen:
                    seen.add(neighbour)
                    previous[neighbour] = (current, mine, theirs, child)
                    queue.append(neighbour)
        if goal not in seen:
            raise CannotAnswer(f"{goal} and {start} are not linked by foreign keys, so they cannot be joined")
        steps, node = [], goal
        while node != start:
            source, mine, theirs, child = previous[node]
            steps.append((source, node, mine, theirs, child))
            node = source
        return steps[::-1]


def annotate(tokens: list[Tok], index: Index) -> list[Tok]:
    """Marks the words naming tables and columns; a multi-word name becomes one token."""
    out, i = [], 0
    while i < len(tokens):
        merged = _match(tokens, i, index)
        if merged is None:
            out.append(tokens[i])
            i += 1
        else:
            out.append(merged[0])
            i += merged[1]
    return out


def _match(tokens: list[Tok], i: int, index: Index) -> tuple[Tok, int] | None:
    for n in (3, 2, 1):
        window = tokens[i : i + n]
        if len(window) < n or any(t.kind != "word" or t.low in STRUCTURAL for t in window):
            continue
        if n > 1 and (window[0].low in FILLER_KEY or window[-1].low in FILLER_KEY):
            continue
        key = tuple(canonical(t.low) for t in window if t.low not in FILLER_KEY)
        if not key or (n == 1 and window[0].low in STOP and not index.literal(window[0].low)):
            continue  # "ordered" in "products ordered by Alice" is a verb, not ordered_at
        table = index.tables.get(key, "")
        columns = tuple(index.columns.get(key, ()))
        if n == 1 and not columns:
            columns = tuple(index.partial.get(key[0], ()))
        if table or columns:
            text = " ".join(t.text for t in window)
            return Tok(text, "word", table, columns, plural=is_plural(window[-1].low)), n
    return None


COMPARATORS_LONGEST_FIRST = sorted(COMPARATORS, key=lambda c: -len(c[0]))
