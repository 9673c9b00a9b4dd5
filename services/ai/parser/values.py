"""Step 7 of a reading: leftover words are looked up as stored values of the text columns of the main table
and its foreign-key neighbours ("customers in Berlin", "orders of Alice"): found, they filter; not found, the
question cannot be answered and the answer says which words were not understood. Typed values of text
filters are replaced by the stored ones they equal ignoring case."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.ai.parser.filters import add_cond
from services.ai.parser.state import Reading
from services.ai.parser.tables import one_per_row
from services.ai.query import Cond, Ref
from services.ai.schema import CannotAnswer
from services.ai.words import NOT, STOP

FindValues = Callable[[str, list[str], list[str]], Awaitable[list[tuple[str, str]]]]
Phrase = tuple[str, list[str], bool]  # (the words as typed, each word, negated)
Found = dict[tuple[Ref | None, str], tuple[str, str, str]]  # (column or None, lower phrase) -> stored

_SKIP = frozenset({"the", "a", "an", "is", "are", "was", "were", "be", "been", "have", "has"})
# the words between a negation and a stored value: not in Berlin, not from Alice, never ordered by Alice
_VALUE_LINKS = frozenset({"in", "from", "by", "of", "at", "to", "for", "with"})
_VERBS = frozenset(
    {"ordered", "bought", "purchased", "placed", "made", "named", "called", "located", "based"}
)
_EQUALITIES = ("=", "<>", "IN", "NOT IN")


async def read_values(r: Reading, find: FindValues) -> None:
    phrases = _leftovers(r)
    pending = [c for c in r.conds if c.op in _EQUALITIES and r.kind(c.ref) == "text"]
    if not phrases and not pending:
        return
    found = await _lookup(r, phrases, pending, find)
    r.conds = [_stored(c, found) for c in r.conds]
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
            if negated and not one_per_row(r, hit[0]):
                raise CannotAnswer(
                    f"the negated '{text}' would need {r.main} with no matching {hit[0]}: "
                    "the embedded generator cannot write that yet, so it does not guess"
                )
            add_cond(r, (hit[0], hit[1]), "<>" if negated else "=", (hit[2],))
    if unknown:
        searched = sorted(r.index.distances(r.main, 2))
        raise CannotAnswer(
            f"I cannot tell what {', '.join(repr(u) for u in unknown)} means here: it is not a table, "
            f"column or stored value of {', '.join(searched)} (your tables: {r.schema.names})"
        )


def _leftovers(r: Reading) -> list[Phrase]:
    phrases: list[Phrase] = []
    i = 0
    while i < len(r.toks):
        tok = r.toks[i]
        if tok.used or tok.kind == "op" or (tok.kind == "word" and (tok.low in STOP or tok.low in NOT)):
            i += 1
            continue
        if tok.kind in ("number", "date"):
            raise CannotAnswer(
                f"I do not know what {tok.text} refers to here: name its column (for example '<column> over {tok.text}')"
            )
        start, words = i, []
        while i < len(r.toks) and (r.toks[i].kind == "quoted" or r.plain(r.toks[i])):
            words.append(r.toks[i].text)
            i += 1
            if r.toks[i - 1].kind == "quoted":
                break
        if not words:  # a column word of an unreachable table
            words.append(tok.text)
            i += 1
        phrases.append((" ".join(words), words, _negated(r, start)))
    return phrases


def _negated(r: Reading, start: int) -> bool:
    """Whether a not / never before the phrase at `start` negates it (and if so, marks it read)."""
    before = r.prev(start, _SKIP)
    if r.word(before) in _VALUE_LINKS:  # not in Berlin, not from Alice, never ordered by Alice
        before = r.prev(before, _SKIP | _VERBS)
    negated = r.word(before) in NOT
    if negated:
        r.use(before)
    return negated


async def _lookup(r: Reading, phrases: list[Phrase], pending: list[Cond], find: FindValues) -> Found:
    """(column or None for any, lower-case phrase) -> (table, column, stored value)."""
    found: Found = {}
    wanted = {p.lower() for text, words, _ in phrases for p in (text, *words)}
    distance = r.index.distances(r.main, 2)
    for table in sorted(distance, key=lambda t: (distance[t], t)):
        columns = [c.name for c in r.index.table(table).columns if c.kind == "text"]
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


def _stored(cond: Cond, found: Found) -> Cond:
    """A typed value replaced by the stored one it equals ignoring case ('paris' -> 'Paris')."""
    values = tuple(found.get((cond.ref, str(v).lower()), (None, None, v))[2] for v in cond.values)
    return Cond(cond.ref, cond.op, values)
