"""The comparison point of `make bench`: an idiomatic FastAPI endpoint (pydantic body) answering the same
JSON as the edge's `SELECT 1`, with no gRPC hop."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class QueryBody(BaseModel):
    sql: str


@app.post("/api/data/query")
async def query(body: QueryBody) -> dict:
    return {
        "columns": [{"name": "?column?", "type": "integer"}],
        "rows": [[1]],
        "row_count": 1,
        "truncated": False,
        "elapsed_ms": 0.01,
        "affected_rows": 0,
        "backend": "sqlite",
    }
