"""Statement scanning for the data service: one statement, $N parameters, read-only classification."""

from __future__ import annotations

import pytest

from services.core.errors import InvalidArgument
from services.data.sqltext import reads_only, render, scan


@pytest.mark.parametrize(
    ("sql", "text", "keyword"),
    [
        ("SELECT 1", "SELECT 1", "SELECT"),
        ("select 1;", "select 1", "SELECT"),
        ("  SELECT 1 ; -- done\n", "  SELECT 1 ", "SELECT"),
        ("SELECT ';' AS a, \"x;y\" FROM t -- ; not a separator", "SELECT ';' AS a, \"x;y\" FROM t", "SELECT"),
        ("SELECT $$a;b$$, $q$ ; $1 $q$", "SELECT $$a;b$$, $q$ ; $1 $q$", "SELECT"),
        ("/* a /* nested; */ ; */ SELECT e'it\\'s;'", "/* a /* nested; */ ; */ SELECT e'it\\'s;'", "SELECT"),
        ("(SELECT 1) UNION (SELECT 2)", "(SELECT 1) UNION (SELECT 2)", "("),
        ("with x as (select 1) select * from x", "with x as (select 1) select * from x", "WITH"),
    ],
)
def test_one_statement_is_cut_at_its_end(sql: str, text: str, keyword: str) -> None:
    statement = scan(sql)
    assert (statement.text, statement.keyword) == (text, keyword)


@pytest.mark.parametrize(
    ("sql", "position"), [("SELECT 1; SELECT 2", 11), ("SELECT 1;DROP TABLE t", 10), ("BEGIN; COMMIT;", 8)]
)
def test_several_statements_are_refused_with_the_position_of_the_second(sql: str, position: int) -> None:
    with pytest.raises(InvalidArgument, match="one statement") as err:
        scan(sql)
    assert err.value.details["position"] == position


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- nothing", "/* nothing */ ;"])
def test_empty_text_is_refused(sql: str) -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        scan(sql)


def test_parameters_outside_quotes_are_found_identifiers_with_dollars_are_not() -> None:
    statement = scan("SELECT $2, '$1', foo$1, \"$1\", $1 -- $3\n")
    assert [(p.index, statement.text[p.start : p.end]) for p in statement.params] == [(1, "$2"), (0, "$1")]
    assert statement.param_count == 2


def test_render_inlines_literals_and_maps_positions_back() -> None:
    statement = scan("SELECT $2, $1 + nosuch, $2")
    rendered = render(statement, ["('abc')", "(12345)"])
    assert rendered.text == "SELECT (12345), ('abc') + nosuch, (12345)"
    original = statement.text.index("nosuch") + 1
    assert rendered.original_position(rendered.text.index("nosuch") + 1) == original
    assert rendered.original_position(rendered.text.index("'abc'") + 1) == statement.text.index("$1") + 1
    assert rendered.original_position(1) == 1


def test_render_without_parameters_is_the_statement_itself() -> None:
    rendered = render(scan("SELECT 1"), [])
    assert rendered.text == "SELECT 1" and rendered.original_position(8) == 8


@pytest.mark.parametrize(("sql", "given"), [("SELECT $1, $2", 1), ("SELECT 1", 1), ("SELECT $3", 3)])
def test_parameter_count_must_match(sql: str, given: int) -> None:
    statement = scan(sql)
    if statement.param_count == given:
        render(statement, ["(1)"] * given)  # $3 with 3 given is fine even if $1, $2 are unused
        return
    with pytest.raises(InvalidArgument, match="parameter"):
        render(statement, ["(1)"] * given)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t", True),
        ("VALUES (1), (2)", True),
        ("SELECT 1 UNION SELECT 2", True),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False),
        ("SELECT * FROM t FOR UPDATE", False),
        ("SELECT 1 INTO new_table", False),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1", False),
        ("CREATE TABLE x (a int)", False),
        ("SHOW search_path", None),
        ("SELEC nonsense (", None),
    ],
)
def test_read_only_classification(sql: str, expected: bool | None) -> None:
    assert reads_only(sql, "postgres") is expected
