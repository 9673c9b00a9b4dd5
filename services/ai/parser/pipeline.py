"""The order of the parser's steps, from a question to a Query."""

from __future__ import annotations

from services.ai.parser import filters, finish, phrases, ranking, tables, values
from services.ai.parser.state import Reading
from services.ai.parser.values import FindValues
from services.ai.query import Query
from services.ai.schema import CannotAnswer, Schema


async def parse(question: str, schema: Schema, find: FindValues) -> Query:
    """What `question` asks of `schema`; CannotAnswer when the words do not map onto one SELECT."""
    if not schema.tables:
        raise CannotAnswer("your tenant has no tables yet, so there is nothing to query")
    reading = Reading.of(question, schema)
    phrases.refuse_writes(reading)
    phrases.read_phrases(reading)
    tables.choose_main(reading)
    tables.resolve(reading)
    phrases.read_sorts(reading)
    ranking.read_aggregates(reading)
    ranking.read_superlatives(reading)
    ranking.read_groups(reading)
    filters.read_filters(reading)
    tables.read_other_tables(reading)
    tables.read_projection(reading)
    await values.read_values(reading, find)
    finish.refuse_unread_negations(reading)
    finish.finish(reading)
    return finish.query(reading)
