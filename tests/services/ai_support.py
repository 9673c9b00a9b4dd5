"""Shared by the AI tests (gRPC, edge, live PostgreSQL): a sample shop schema (customers, orders, products with
foreign keys) and its rows, the questions the embedded generator must answer with the rows each one expects,
a real data service on port 0, the AI service in front of it with two tenants loaded, and a local fake of the
OpenAI chat completions API."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format

from launchpad.ai.v1 import ai_pb2, ai_pb2_grpc
from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.ai.servicer import build as build_ai
from services.core.config import load_settings
from services.core.server import Runtime, create_server, new_runtime
from services.data.servicer import build as build_data
from tests.services.fakehttp import fake_http
from tests.support import TEST_KEYS, make_token, metadata, running_service

SHOP = [
    "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text, city text, "
    "created_at timestamp)",
    "CREATE TABLE products (id integer PRIMARY KEY, name text NOT NULL, category text, price real)",
    "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES customers (id), "
    "product_id integer REFERENCES products (id), quantity integer, total real, status text, ordered_at timestamp)",
    "INSERT INTO customers VALUES (1, 'Alice', 'alice@example.com', 'Berlin', '2024-01-05'), "
    "(2, 'Bob', 'bob@example.com', 'Paris', '2024-02-10'), (3, 'Carol', 'carol@example.org', 'Berlin', "
    "'2024-03-15'), (4, 'Dave', 'dave@example.com', 'London', '2023-11-20'), "
    "(5, 'Erin', 'erin@example.org', 'Paris', '2024-05-25')",
    "INSERT INTO products VALUES (1, 'Laptop', 'electronics', 1200), (2, 'Phone', 'electronics', 800), "
    "(3, 'Desk', 'furniture', 300), (4, 'Chair', 'furniture', 150), (5, 'Novel', 'books', 20), "
    "(6, 'Cookbook', 'books', 35)",
    "INSERT INTO orders VALUES (1, 1, 1, 1, 1200, 'shipped', '2024-03-01'), "
    "(2, 1, 5, 2, 40, 'delivered', '2024-03-05'), (3, 2, 2, 1, 800, 'shipped', '2024-04-02'), "
    "(4, 3, 3, 1, 300, 'pending', '2024-04-10'), (5, 3, 4, 4, 600, 'delivered', '2024-05-01'), "
    "(6, 2, 6, 3, 105, 'cancelled', '2024-05-20'), (7, 1, 4, 2, 300, 'pending', '2024-06-11'), "
    "(8, 5, 1, 1, 1200, 'delivered', '2024-06-30')",
]
# Another tenant's tables: names no question of the shop tenant may ever lead to.
OTHER = [
    "CREATE TABLE payroll (id integer PRIMARY KEY, employee_name text, salary real)",
    "CREATE TABLE secret_projects (id integer PRIMARY KEY, codename text)",
    "INSERT INTO payroll VALUES (1, 'Mallory', 9000), (2, 'Trent', 7000)",
]
OTHER_NAMES = ("payroll", "secret_projects", "employee_name", "codename", "salary", "Mallory")

Rows = list[list[Any]]


@dataclass(frozen=True)
class Case:
    """A question, what it must return (a reference query or literal rows) and whether order matters."""

    question: str
    expect: str | Rows
    ordered: bool = False
    intent: str = ""


# Every intent of the issue: show/list, count, filter by value, order/top N, group by, latest/oldest, join.
CASES = [
    Case("show all customers", "SELECT * FROM customers", intent="list"),
    Case("list the products", "SELECT * FROM products", intent="list"),
    Case("show the names and emails of customers", "SELECT name, email FROM customers", intent="list"),
    Case("list all categories", [["books"], ["electronics"], ["furniture"]], ordered=True, intent="list"),
    Case("how many customers are there?", [[5]], intent="count"),
    Case("count the orders", [[8]], intent="count"),
    Case("how many orders did Carol place", [[2]], intent="count+join"),
    Case("customers in Berlin", "SELECT * FROM customers WHERE id IN (1, 3)", intent="filter"),
    Case("customers whose city is paris", "SELECT * FROM customers WHERE id IN (2, 5)", intent="filter"),
    Case("customers in Berlin or Paris", "SELECT * FROM customers WHERE id IN (1, 2, 3, 5)", intent="filter"),
    Case("orders with status shipped", "SELECT * FROM orders WHERE id IN (1, 3)", intent="filter"),
    Case(
        "orders that are not delivered", "SELECT * FROM orders WHERE id IN (1, 3, 4, 6, 7)", intent="filter"
    ),
    Case("products that cost more than 500", "SELECT * FROM products WHERE id IN (1, 2)", intent="filter"),
    Case("products cheaper than 100", "SELECT * FROM products WHERE id IN (5, 6)", intent="filter"),
    Case("orders with a quantity of at least 3", "SELECT * FROM orders WHERE id IN (5, 6)", intent="filter"),
    Case("products in the books category", "SELECT * FROM products WHERE id IN (5, 6)", intent="filter"),
    Case(
        "customers with email containing example.org",
        "SELECT * FROM customers WHERE id IN (3, 5)",
        intent="filter",
    ),
    Case("orders placed after 2024-05-01", "SELECT * FROM orders WHERE id IN (6, 7, 8)", intent="filter"),
    Case("customers who joined in 2024", "SELECT * FROM customers WHERE id <> 4", intent="filter"),
    Case("order 5", "SELECT * FROM orders WHERE id = 5", intent="filter"),
    Case(
        "the 3 most expensive products",
        "SELECT * FROM products WHERE id IN (1, 2, 3) ORDER BY price DESC",
        ordered=True,
        intent="top",
    ),
    Case("cheapest product", "SELECT * FROM products WHERE id = 5", intent="top"),
    Case("products sorted by name", "SELECT * FROM products ORDER BY name", ordered=True, intent="order"),
    Case(
        "products sorted by price in descending order",
        "SELECT * FROM products ORDER BY price DESC",
        ordered=True,
        intent="order",
    ),
    Case("latest order", "SELECT * FROM orders WHERE id = 8", intent="latest"),
    Case(
        "the 2 oldest customers",
        "SELECT * FROM customers WHERE id IN (4, 1) ORDER BY created_at",
        ordered=True,
        intent="oldest",
    ),
    Case(
        "number of orders per status",
        [["delivered", 3], ["shipped", 2], ["pending", 2], ["cancelled", 1]],
        intent="group",
    ),
    Case(
        "average price by category",
        "SELECT category, AVG(price) FROM products GROUP BY category",
        intent="group",
    ),
    Case(
        "orders per month",
        [["2024-03", 2], ["2024-04", 2], ["2024-05", 2], ["2024-06", 2]],
        ordered=True,
        intent="group",
    ),
    Case(
        "total order amount per customer",
        "SELECT c.name, SUM(o.total) FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.id, c.name",
        intent="group+join",
    ),
    Case("orders of Alice", "SELECT * FROM orders WHERE customer_id = 1", intent="join"),
    Case(
        "show orders with customer names",
        "SELECT o.*, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
        intent="join",
    ),
    Case(
        "products ordered by Alice", "SELECT * FROM products WHERE id IN (1, 4, 5)", intent="join (two hops)"
    ),
    Case("customers without orders", "SELECT * FROM customers WHERE id = 4", intent="join (anti)"),
    Case("which customer has the most orders", [["Alice", 3]], intent="top+group+join"),
    Case(
        "top 2 customers by total spent",
        "SELECT c.name, SUM(o.total) AS s FROM customers c JOIN orders o ON o.customer_id = c.id "
        "GROUP BY c.id, c.name ORDER BY s DESC LIMIT 2",
        ordered=True,
        intent="top+group+join",
    ),
    # Negations: each once read as its opposite (the not/never dropped), now the complement.
    Case(
        "customers not in Berlin", "SELECT * FROM customers WHERE id IN (2, 4, 5)", intent="filter (negated)"
    ),
    Case("customers not named Alice", "SELECT * FROM customers WHERE id <> 1", intent="filter (negated)"),
    Case("orders not from Alice", "SELECT * FROM orders WHERE customer_id <> 1", intent="join (negated)"),
    Case("products not cheaper than 100", "SELECT * FROM products WHERE id IN (1, 2, 3, 4)", intent="filter"),
    Case("orders not after 2024-05-01", "SELECT * FROM orders WHERE id IN (1, 2, 3, 4, 5)", intent="filter"),
    Case("orders that are not over 500", "SELECT * FROM orders WHERE id IN (2, 4, 6, 7)", intent="filter"),
    Case(
        "products not between 10 and 100", "SELECT * FROM products WHERE id IN (1, 2, 3, 4)", intent="filter"
    ),
    Case("customers created before 2024", "SELECT * FROM customers WHERE id = 4", intent="filter (year)"),
    Case("what is the highest price", "SELECT MAX(price) FROM products", intent="aggregate"),
    Case("total revenue", "SELECT SUM(total) FROM orders", intent="aggregate"),
    Case(
        "how much did Alice spend",
        "SELECT SUM(total) FROM orders WHERE customer_id = 1",
        intent="aggregate+join",
    ),
]
UNANSWERABLE = [
    "what is the weather in Paris",
    "show all invoices",
    "who is the ceo of the company",
    "show customers with a purple hat",
    "delete all customers",
    "drop the orders table",
    # a negation the generator cannot express: refused, never answered as its opposite
    "products never ordered by Alice",
    "products never ordered",
    "customers not in 2024",
]


def rows(response: data_pb2.QueryResponse) -> Rows:
    """Rows as a REST client sees them (bare cell values)."""
    return [[_bare(cell) for cell in row.values] for row in response.rows]


def _bare(cell: data_pb2.Cell) -> Any:
    kind = cell.WhichOneof("kind")
    if kind == "json":
        return json_format.MessageToDict(cell.json)
    return None if kind in (None, "null") else getattr(cell, kind)


def same_rows(got: Rows, expected: Rows, ordered: bool) -> bool:
    if ordered:
        return got == expected
    return sorted(map(repr, got)) == sorted(map(repr, expected))


def leaked(answer: ai_pb2.QueryAiResponse, question: str) -> list[str]:
    """The other tenant's names that an answer shows although the question did not say them."""
    text = f"{answer.sql} {answer.explanation} {answer.reason} {list(answer.tables)}"
    return [name for name in OTHER_NAMES if name in text and name.lower() not in question.lower()]


class Tenant:
    """A developer of one tenant, calling the data service directly."""

    def __init__(self, channel: Any, tenant: str, role: str = "developer") -> None:
        self.stub = data_pb2_grpc.DataServiceStub(channel)
        self.tenant = tenant
        self.token = make_token(sub=f"{role}-{tenant}", tenant=tenant, roles=(role,))
        self.md = metadata(self.token)

    async def run(self, sql: str) -> data_pb2.QueryResponse:
        return await self.stub.Query(data_pb2.QueryRequest(sql=sql), metadata=self.md)

    async def load(self, statements: list[str]) -> None:
        for statement in statements:
            await self.run(statement)


@contextlib.asynccontextmanager
async def data_service() -> AsyncIterator[str]:
    """The real data service (the environment picks SQLite or PostgreSQL) on port 0; yields its address."""
    runtime = new_runtime(load_settings("data"))
    runtime.keys = TEST_KEYS
    try:
        server, port = await create_server(runtime, await build_data(runtime), port=0)
    except BaseException:
        await runtime.close()
        raise
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await runtime.close()


# --- A fake of the OpenAI chat completions API -----------------------------------------------------------

Reply = Callable[[dict[str, Any]], tuple[int, Any]]


def sql_reply(sql: str, explanation: str = "from the fake model") -> tuple[int, Any]:
    """A chat completion whose message is the JSON the prompt asks for."""
    return completion(orjson.dumps({"sql": sql, "explanation": explanation}).decode())


def completion(content: str) -> tuple[int, Any]:
    return 200, {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


@dataclass
class FakeOpenAi:
    replies: list[Reply]  # one per chat call, the last one repeats
    delay_s: float = 0.0  # before each chat answer (the start-up GET /models answers at once)
    url: str = ""
    chats: list[dict[str, Any]] = field(default_factory=list)  # request bodies
    headers: list[dict[str, str]] = field(default_factory=list)

    def prompt(self, call: int = 0) -> str:
        return "\n".join(m["content"] for m in self.chats[call]["messages"])

    def chat(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        self.chats.append(body)
        self.headers.append(headers)
        time.sleep(self.delay_s)
        return self.replies[min(len(self.chats), len(self.replies)) - 1](body)


@contextlib.contextmanager
def fake_openai(*replies: Reply, delay_s: float = 0.0) -> Iterator[FakeOpenAi]:
    """Serves GET /v1/models and POST /v1/chat/completions on 127.0.0.1, port 0, as OpenAI documents them."""
    fake = FakeOpenAi(list(replies), delay_s)
    models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
    with fake_http(
        {"/v1/models": lambda query: (200, models)}, posts={"/v1/chat/completions": fake.chat}
    ) as http:
        fake.url = f"{http.url}/v1"
        yield fake


# --- The AI service in front of a real data service --------------------------------------------------------


async def fails(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details() or ""


@dataclass
class AiStack:
    """The AI service (stub, channel, runtime) and the data service's two tenants: `shop` holds SHOP (the
    customers, orders and products), `other` holds OTHER (payroll, secret_projects)."""

    stub: ai_pb2_grpc.AiServiceStub
    channel: grpc.aio.Channel
    runtime: Runtime
    shop: Tenant
    other: Tenant
    model: FakeOpenAi | None

    @property
    def fake(self) -> FakeOpenAi:
        assert self.model is not None, "this stack was started without a fake model (no replies)"
        return self.model

    async def ask(self, question: str, tenant: Tenant | None = None, **fields: Any) -> ai_pb2.QueryAiResponse:
        request = ai_pb2.QueryAiRequest(question=question, **fields)
        return await self.stub.QueryAi(request, metadata=(tenant or self.shop).md)

    async def suggest(self, tenant: Tenant | None = None, **fields: Any) -> ai_pb2.SuggestSqlResponse:
        return await self.stub.SuggestSql(
            ai_pb2.SuggestSqlRequest(**fields), metadata=(tenant or self.shop).md
        )


async def answer_case(ai: AiStack, case: Case) -> tuple[ai_pb2.QueryAiResponse, str]:
    """The shop tenant's answer to the case's question, and what is wrong with it: "" when it is valid SQL
    that returns the rows the case expects (run by the data service, as the caller)."""
    answer = await ai.ask(case.question)
    if not answer.valid:
        return answer, f"{case.question!r}: {answer.reason}"
    got = rows(await ai.shop.run(answer.sql))
    expected = case.expect if isinstance(case.expect, list) else rows(await ai.shop.run(case.expect))
    if not same_rows(got, expected, case.ordered):
        return answer, f"{case.question!r}: {answer.sql}\n  {got}\n  != {expected}"
    return answer, ""


@contextlib.asynccontextmanager
async def ai_stack(
    env: pytest.MonkeyPatch,
    *replies: Reply,
    delay_s: float = 0.0,
    tenants: tuple[str, str] = ("acme", "globex"),
) -> AsyncIterator[AiStack]:
    """The data service (the environment picks SQLite or PostgreSQL) with the two tenants loaded, and the AI
    service in front of it. With `replies`, a fake model answers them in turn (the last one repeating) at
    OPENAI_BASE_URL; whether the AI service asks it is OPENAI_KEY's business, which the caller sets."""
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(fake_openai(*replies, delay_s=delay_s)) if replies else None
        if model is not None:
            env.setenv("OPENAI_BASE_URL", model.url)
        async with data_service() as data_address:
            env.setenv("LAUNCHPAD_DATA_ADDR", data_address)
            async with running_service("ai", build_ai) as (runtime, channel):
                data_channel = grpc.aio.insecure_channel(data_address)
                try:
                    shop, other = Tenant(data_channel, tenants[0]), Tenant(data_channel, tenants[1])
                    await shop.load(SHOP)
                    await other.load(OTHER)
                    yield AiStack(ai_pb2_grpc.AiServiceStub(channel), channel, runtime, shop, other, model)
                finally:
                    await data_channel.close()
