"""Synthetic series from the services' real counters, for when no Prometheus is configured.

Scrapes every service's /metrics (gRPC port + 1000) with prometheus_client's text parser, plus this process's
own registry, and answers a small PromQL subset in Prometheus's vector shape: `name`, `name{l="v", l2=~"re"}`
and `sum(...)` of those. Everything else is InvalidArgument naming what is supported.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.core.config import METRICS_PORT_OFFSET, Settings
from services.core.errors import InvalidArgument
from services.core.topology import ServiceMetrics
from services.metrics.prom import Answer

SUPPORTED = 'the embedded engine answers instant queries `name`, `name{label="v"}` (=, !=, =~, !~) and `sum(...)` of those; set PROM_URL for full PromQL'
_QUERY = re.compile(r"^\s*(?:(sum)\s*\(\s*(.*?)\s*\)|(.*?))\s*$", re.S)
_SELECTOR = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?$", re.S)
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
SCRAPE_TIMEOUT_S = 1.0

Sample = tuple[dict[str, str], float]


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    matchers: tuple[tuple[str, str, str], ...]
    total: bool


def parse(expr: str) -> Query:
    outer = _QUERY.match(expr)
    assert outer is not None  # the pattern matches any string
    total, inner = outer.group(1) is not None, outer.group(2) if outer.group(1) else outer.group(3)
    selector = _SELECTOR.match(inner or "")
    if selector is None:
        raise InvalidArgument(f"unsupported expression {expr!r}: {SUPPORTED}", query=expr)
    return Query(selector.group(1), _matchers(selector.group(2) or "", expr), total)


def _matchers(text: str, expr: str) -> tuple[tuple[str, str, str], ...]:
    found, pos = [], 0
    while pos < len(text.rstrip()):
        match = _MATCHER.match(text, pos)
        if match is None:
            raise InvalidArgument(f"cannot parse label matchers at {text[pos:]!r}: {SUPPORTED}", query=expr)
        label, op, raw = match.group(1), match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", raw)
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise InvalidArgument(f"bad regex {value!r}: {exc.msg}", query=expr) from None
        found.append((label, op, value))
        pos = match.end()
    return tuple(found)


def _matches(labels: dict[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    for label, op, value in matchers:
        actual = labels.get(label, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def format_value(value: float) -> str:
    """Prometheus's sample formatting: "1", "0.25", "+Inf", "NaN"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def parse_exposition(text: str, job: str, instance: str) -> list[Sample]:
    """Samples with their name as __name__ and the job/instance labels Prometheus would attach."""
    return [
        ({"__name__": s.name, **s.labels, "job": job, "instance": instance}, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


class EmbeddedMetrics:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        self._own = ServiceMetrics(settings.process.service)  # this service's series, whatever the topology

    def targets(self) -> dict[str, str]:
        """job -> host:port of /metrics for the other services (this process reads its own registry)."""
        out = {}
        for name in self.settings.peers.backends:
            if name == self.settings.process.service or name not in self.settings.peers.addresses:
                continue
            host, _, port = self.settings.peers.address(name).rpartition(":")
            out[name] = f"{host}:{int(port) + METRICS_PORT_OFFSET}"
        return out

    async def _scrape(self, job: str, target: str) -> list[Sample]:
        try:
            response = await self._http.get(f"http://{target}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            return []  # a service that is not running has no series, as in Prometheus
        return parse_exposition(response.text, job, target)

    async def samples(self) -> list[Sample]:
        own = parse_exposition(generate_latest(self._own).decode(), self.settings.process.service, "self")
        scraped = await asyncio.gather(*(self._scrape(j, t) for j, t in self.targets().items()))
        return own + [sample for batch in scraped for sample in batch]

    async def query(self, expr: str, at: str, is_range: bool) -> Answer:
        if is_range:
            raise InvalidArgument(f"range queries need Prometheus: {SUPPORTED}")
        query = parse(expr)
        now = time.time()
        picked = [
            (labels, value)
            for labels, value in await self.samples()
            if labels["__name__"] == query.name and _matches(labels, query.matchers)
        ]
        if query.total:
            result = (
                [{"metric": {}, "value": [now, format_value(sum(v for _, v in picked))]}] if picked else []
            )
        else:
            result = [{"metric": labels, "value": [now, format_value(value)]} for labels, value in picked]
        warnings = ("synthetic: built from the services' own /metrics at the current time",)
        if at:
            warnings += (f"time={at} ignored: the embedded engine only knows the current values",)
        data: dict[str, Any] = {"resultType": "vector", "result": result}
        return Answer("success", data, warnings, synthetic=True)

    async def close(self) -> None:
        await self._http.aclose()
