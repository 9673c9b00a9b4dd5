"""Suggestions from the embedded source, for what the user is typing:

- SQL being typed ("SELECT * FROM cu"): completions of its last word with the tenant's table and column
  names (and the statement itself when it is already complete);
- a question being typed ("orders of Alice"): the embedded generator's answer;
- then common statements for the table in focus (the editor's table, else the tables the text names, else
  every table): its rows, its size, its newest rows, counts per category, its rows with their parents' names.

Candidates are only candidates: the assistant validates each one and drops those that fail.
"""

from __future__ import annotations

import contextlib
import re

from services.ai.embedded import FindValues, generate
from services.ai.query import singular_of
from services.ai.render import ident
from services.ai.schema import CannotAnswer, Draft, Schema, Table, identifier_words

_SQL = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_LAST_WORD = re.compile(r"([A-Za-z_][\w]*)$")
_CATEGORY_WORDS = frozenset({"category", "status", "country", "city", "region", "role", "group", "state"})


async def suggestions(context: str, table: str, schema: Schema, find: FindValues, limit: int) -> list[Draft]:
    text = context.strip()
    drafts: list[Draft] = []
    if _SQL.match(text):
        drafts += completions(context, schema)
    elif text:
        with contextlib.suppress(CannotAnswer):  # a half-typed question: the templates below still help
            drafts.append(await generate(text, schema, find))
    for focus in focus_tables(text, table, schema)[:limit]:
        drafts += table_templates(focus, schema)
    return drafts


def completions(context: str, schema: Schema) -> list[Draft]:
    drafts = [Draft(context.strip(), "Your statement as typed.")]
    if re.search(r"\bfrom\s*$", context, re.IGNORECASE):
        drafts += [Draft(f"{context.rstrip()} {ident(t.name)}", f"Reads {t.name}.") for t in schema.tables]
    match = _LAST_WORD.search(context)
    if match is None:
        return drafts
    fragment, head = match.group(1), context[: match.start()]
    named = [t for t in schema.tables if re.search(rf"\b{re.escape(t.name)}\b", head, re.IGNORECASE)]
    names = [t.name for t in schema.tables] + [c.name for t in (named or schema.tables) for c in t.columns]
    for name in dict.fromkeys(names):
        if name.lower().startswith(fragment.lower()) and name.lower() != fragment.lower():
            drafts.append(Draft(head + ident(name), f"Completes {fragment!r} to {name}."))
    return drafts


def focus_tables(text: str, table: str, schema: Schema) -> list[Table]:
    if table:
        found = schema.table(table)
        return [found] if found else []
    words = {w for w in identifier_words(text)}
    named = [t for t in schema.tables if set(identifier_words(t.name)) & words]
    return named or list(schema.tables)


def table_templates(table: Table, schema: Schema) -> list[Draft]:
    name = ident(table.name)
    drafts = [
        Draft(f"SELECT * FROM {name} LIMIT 100", f"The first 100 rows of {table.name}."),
        Draft(f"SELECT COUNT(*) AS count FROM {name}", f"How many rows {table.name} has."),
    ]
    time = table.time_column()
    if time is not None:
        drafts.append(
            Draft(
                f"SELECT * FROM {name} ORDER BY {ident(time.name)} DESC LIMIT 10",
                f"The 10 newest rows of {table.name}, by {time.name}.",
            )
        )
    for column in table.columns:
        if column.kind == "text" and set(identifier_words(column.name)) & _CATEGORY_WORDS:
            drafts.append(
                Draft(
                    f"SELECT {ident(column.name)}, COUNT(*) AS count FROM {name} "
                    f"GROUP BY {ident(column.name)} ORDER BY count DESC",
                    f"How many rows of {table.name} per {column.name}.",
                )
            )
    for key in table.foreign_keys:
        parent = schema.table(key.table)
        label_column = parent.label_column() if parent is not None else None
        if (
            parent is None
            or label_column is None
            or parent.name == table.name
            or len(key.columns) != len(key.references)
        ):
            continue
        label = label_column.name
        on = " AND ".join(
            f"{ident(parent.name)}.{ident(r)} = {name}.{ident(c)}"
            for c, r in zip(key.columns, key.references, strict=True)
        )
        alias = ident(f"{singular_of(parent.name)}_{label}")
        drafts.append(
            Draft(
                f"SELECT {name}.*, {ident(parent.name)}.{ident(label)} AS {alias} FROM {name} "
                f"JOIN {ident(parent.name)} ON {on} LIMIT 100",
                f"Rows of {table.name} with the {label} of their {parent.name}.",
            )
        )
    return drafts
