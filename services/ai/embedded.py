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

The vocabulary is in words.py; parser/ turns the question into a Query (query.py), render.py turns the
Query into SQL text and an explanation.
"""

from __future__ import annotations

from services.ai.parser.pipeline import FindValues, parse
from services.ai.render import explain, render
from services.ai.schema import Draft, Schema

__all__ = ["FindValues", "generate"]


async def generate(question: str, schema: Schema, find: FindValues) -> Draft:
    """One SELECT answering `question` on `schema`; CannotAnswer when the words do not map onto it."""
    query = await parse(question, schema, find)
    return Draft(render(query), explain(query))
