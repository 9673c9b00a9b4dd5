"""WAF: reject hostile payloads in the path, the query string and JSON bodies (403, counted, audited).

Rules are regular expressions applied per field: every query parameter and every string (and key) of a JSON
body is checked with its top-level field name, so a route can exempt the fields that legitimately carry code.

Field rules come from the contracts: a method's (launchpad.api.v1.edge) option lists, per top-level request
field, the rules that check it (`only`) or do not (`skip`), and every binding of the method, aliases included,
gets them. A request gets the rule of the route that serves it (edge.transcoding.rules.rule_of); a request no
route serves gets every rule on every field. What the contracts declare, and why:
- `sql` and `params` of DataService.Query and Explain: SQL is text for the database, which enforces tenant
  isolation and privileges; string checks on it only produce false positives (`SELECT * FROM t WHERE name =
  '<script>'`, `-- comments`, `a; b`, `'../x'` are all legitimate). Params are bound, never interpolated.
  Only `log4shell` still applies.
- `context` of AiService.SuggestSql and `question` of AiService.QueryAi: natural language or SQL being typed.
  Only `log4shell` applies.
- `query` of LogsService.Query and MetricsService.Query: LogQL / PromQL, which people use to search for attack
  strings in their own logs. Only `log4shell` applies.
- `wpk` of DeployService.PackWpk: a workflow package is code by design (shell steps, `${VAR}` and `${{ }}`
  templating); `shell` and `ssti` do not apply. Its safety is the signature check at deploy and the roles that
  may pack and deploy; traversal, xss, nosql, sqli and log4shell still apply.
- StorageService.ReadObject / WriteObject (`waf_skip`): the bytes are opaque data authorized by the signed URL.
- `password`, on every route (EVERYWHERE, here): hashed, never interpreted or logged; any character is a good
  password character.
Bodies: only JSON bodies are inspected (ContentTypeMiddleware makes every POST/PUT/PATCH JSON except the
`raw_body` routes). The body is buffered up to `max_body_bytes` (the limit BodyLimitMiddleware enforces in
front, so nothing larger ever arrives), inspected, and replayed to the app. A JSON body that is not valid JSON
passes uninspected: the route rejects it with 400 and nothing reaches a service. The whole body is inspected,
not a prefix, so padding cannot push a payload past the WAF. The cost of a large body is bounded by the body
limit and the rate limits in front; bodies over _OFF_LOOP_BYTES are scanned off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.errors import request_id_of, send_error
from edge.middleware.headers import header, media_type
from edge.transcoding.rules import RouteRule, rule_of
from services.core.errors import Code

log = logging.getLogger("launchpad.edge.waf")

BLOCKED = Counter("edge_waf_blocked_total", "Requests blocked by the WAF", ["rule"])


class Audit(Protocol):
    def append(self, event: dict[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """A named regex, matched against lower-cased text.

    Write every top-level alternative so it starts with a literal character (no group, class or anchor first):
    the combined pattern then gets sre's C-level "skip to a candidate character" scan, which keeps large bodies
    cheap to scan. Bound every repetition between literals (`[^{}]{0,100}`), never `.*?`, so
    no input can make a scan quadratic.
    """

    id: str
    pattern: str
    description: str


_SHELL_COMMANDS = (
    r"\s*(?:rm|cat|curl|wget|sh|bash|zsh|nc|ncat|python3?|perl|ruby|php|chmod|chown|id|uname|whoami|ping"
    r"|nslookup|powershell|cmd)\b"
)
_NOSQL_OPERATORS = "ne|eq|gt|gte|lt|lte|in|nin|regex|exists|expr|function|accumulator|or|and|not|nor"

# When several rules match at the same position, the first listed is reported.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "log4shell",
        r"\$\{\s*(?:jndi\s*:|\$\{|(?:lower|upper|env|sys|date|java|main|::-)[^{}]{0,100}\})",
        "JNDI lookups and their nested-lookup obfuscations",
    ),
    Rule("traversal", r"\.\.[/\\]|/\.\.$|\\\.\.$|%2e%2e|%252e|%00|\x00", "path traversal and NUL bytes"),
    Rule(
        "xss",
        r"<\s*(?:script|iframe|object|embed|svg)\b|javascript\s*:"
        r"|on(?:error|load|click|focus|blur|toggle|begin|mouse\w+|pointer\w+|key\w+|animation\w+)\s*=",
        "script injection",
    ),
    Rule(
        "ssti",
        r"\{\{[^{}]{0,100}\}\}|\{%[^%]{0,100}%\}|\$\{[^{}]{0,100}\}|#\{[^{}]{0,100}\}",
        "server-side template injection",
    ),
    Rule(
        "shell",
        "|".join(re.escape(chain) + _SHELL_COMMANDS for chain in (";", "&", "|", "`", "$(")),
        "shell command chaining",
    ),
    Rule(
        "nosql",
        rf"\$where\b|\$(?:{_NOSQL_OPERATORS})$|\[\$\w+\]",
        'NoSQL operator injection (operator keys such as {"$ne": null}, $where, name[$ne]=)',
    ),
    Rule(
        "sqli",
        r"'\s*or\s+'?\w+'?\s*=\s*'?\w+|;\s*(?:drop|truncate|alter)\s+table\b|union\s+(?:all\s+)?select\b"
        r"|sleep\s*\(",  # also pg_sleep(
        "SQL injection outside the SQL fields",
    ),
)

_ALL = frozenset(r.id for r in DEFAULT_RULES)
# Top-level field -> rule ids that do not apply to it, on every route.
EVERYWHERE: Mapping[str, frozenset[str]] = {"password": _ALL}


Scan = Callable[[str], str | None]


class Matcher:
    """The rules as one flat alternation per exemption set: one C-speed scan per string, then the rule that
    matches at the found position names the block."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._single = {r.id: re.compile(r.pattern, re.DOTALL) for r in self.rules}
        self._scanners: dict[frozenset[str], Scan] = {}

    def scanner(self, exempt: frozenset[str] = frozenset()) -> Scan:
        """A function text -> id of the rule matching first (case-insensitively), or None."""
        scan = self._scanners.get(exempt)
        if scan is None:
            scan = self._scanners[exempt] = self._build(exempt)
        return scan

    def match(self, text: str, exempt: frozenset[str] = frozenset()) -> str | None:
        return self.scanner(exempt)(text)

    def _build(self, exempt: frozenset[str]) -> Scan:
        active = [(r.id, self._single[r.id]) for r in self.rules if r.id not in exempt]
        if not active:
            return lambda text: None
        search = re.compile("|".join(rx.pattern for _, rx in active), re.DOTALL).search

        def scan(text: str) -> str | None:
            lowered = text.lower()
            found = search(lowered)
            if found is None:
                return None
            position = found.start()
            return next(rule for rule, rx in active if rx.match(lowered, position))

        return scan


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included; iterative, so nesting depth cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, child in item.items():
                yield key
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


class _Blocked(Exception):
    def __init__(self, rule: str, where: str) -> None:
        self.rule, self.where = rule, where


_OFF_LOOP_BYTES = 64 * 1024


def _check(scan: Scan, text: str, kind: str, name: str = "") -> None:
    rule = scan(text)
    if rule is not None:
        raise _Blocked(rule, f"{kind}:{name}" if name else kind)


class WafMiddleware:
    """403 for requests whose path, query parameters or JSON body fields match a rule (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        audit: Audit,
        rules: Iterable[Rule] = DEFAULT_RULES,
        route_rules: Iterable[RouteRule] = (),
        max_body_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        """`route_rules`: the rules the routes declare, checked (unknown rule ids raise) and compiled here,
        at start-up; the rule a request gets comes from the scope (rules.rule_of)."""
        self.app = app
        self.audit = audit
        self.max_body_bytes = max_body_bytes
        self.rules = tuple(rules)
        self._matcher = Matcher(self.rules)
        self._all = self._matcher.scanner()
        # field -> scanner per route rule, built once: a request costs lookups, not rule-set computations.
        self._by_rule: dict[RouteRule, Mapping[str, Scan]] = {}
        for rule in (RouteRule(), *route_rules):
            self._fields(rule)

    def _fields(self, rule: RouteRule) -> Mapping[str, Scan]:
        fields = self._by_rule.get(rule)
        if fields is None:
            fields = self._by_rule[rule] = self._field_scanners(rule)
        return fields

    def _field_scanners(self, rule: RouteRule) -> Mapping[str, Scan]:
        known = frozenset(r.id for r in self.rules)
        exempt = dict(EVERYWHERE)
        for field, waf in rule.waf_fields:
            unknown = (waf.only | waf.skip) - known
            if unknown:
                raise ValueError(f"WAF field rule for {field!r} names unknown rules {sorted(unknown)}")
            exempt[field] = ((known - waf.only) if waf.only else frozenset()) | waf.skip
        return {field: self._matcher.scanner(ids) for field, ids in exempt.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rule = rule_of(scope)
        if rule.waf_skip:
            await self.app(scope, receive, send)
            return
        fields = self._fields(rule)
        try:
            self._check_target(scope, fields)
            if scope["type"] == "http" and self._is_json(scope):
                receive = await self._check_body(receive, fields)
        except _Blocked as blocked:
            await self._block(scope, send, blocked)
            return
        await self.app(scope, receive, send)

    def _check_target(self, scope: Scope, fields: Mapping[str, Scan]) -> None:
        path = scope["path"]
        _check(self._all, path, "path")
        raw_path = scope.get("raw_path")
        if raw_path is not None and raw_path != path.encode():  # percent-encodings only show in the raw form
            _check(self._all, raw_path.decode("latin-1"), "path")
        query = scope.get("query_string", b"").decode("latin-1")
        if not query:
            return
        for name, value in parse_qsl(query, keep_blank_values=True):
            scan = fields.get(name, self._all)
            _check(self._all, name, "query", name)
            _check(scan, value, "query", name)
            _check(scan, unquote(value), "query", name)  # double encoding

    @staticmethod
    def _is_json(scope: Scope) -> bool:
        return media_type(header(scope, b"content-type")) == "application/json"

    async def _check_body(self, receive: Receive, fields: Mapping[str, Scan]) -> Receive:
        body, messages = await self._read(receive)
        if body is None:  # over the inspection limit: only possible without BodyLimitMiddleware in front
            raise _Blocked("oversize", "body")
        if len(body) > _OFF_LOOP_BYTES:
            # Scanning a large crafted body takes long enough to stall other requests: do it off the event
            # loop (the rate limits bound how often one client can ask for it).
            await asyncio.to_thread(self._check_json, body, fields)
        elif body:
            self._check_json(body, fields)
        return _replay(messages, receive)

    async def _read(self, receive: Receive) -> tuple[bytes | None, list[Message]]:
        """Reads the whole body (bounded), keeping the messages so they can be replayed as they came."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return b"", messages  # disconnect: let the app see it
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return None, messages
            if not message.get("more_body", False):
                return b"".join(m.get("body", b"") for m in messages), messages

    def _check_json(self, body: bytes, fields: Mapping[str, Scan]) -> None:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return  # the route answers 400; nothing reaches a service
        if not isinstance(document, dict):
            for text in _strings(document):
                _check(self._all, text, "body")
            return
        for field, value in document.items():
            _check(self._all, field, "body", field)
            scan = fields.get(field, self._all)
            if isinstance(value, str):
                _check(scan, value, "body", field)
            elif isinstance(value, (dict, list)):
                for text in _strings(value):
                    _check(scan, text, "body", field)

    async def _block(self, scope: Scope, send: Send, blocked: _Blocked) -> None:
        request_id = request_id_of(scope)
        client = scope.get("client")
        BLOCKED.labels(blocked.rule).inc()
        event = {
            "action": "waf.block",
            "outcome": "denied",
            "rule": blocked.rule,
            "where": blocked.where,  # which field, never the payload itself
            "request_id": request_id,
            "actor": client[0] if client else "unknown",
            "method": scope.get("method", "WEBSOCKET"),
        }
        if blocked.where == "path":  # the path is the payload: keep a fingerprint, not the text
            event["path_sha256"] = hashlib.sha256(scope["path"].encode()).hexdigest()
        else:
            event["path"] = scope["path"][:256]
        try:
            self.audit.append(event)
        except Exception:
            # The request is refused either way; a broken audit log must not turn a 403 into a 500.
            log.exception("waf: audit append failed for %s", request_id)
        if blocked.rule == "oversize":
            await send_error(
                send, Code.INVALID_ARGUMENT, "request body too large to inspect", request_id, http_status=413
            )
        elif scope["type"] == "websocket":
            await send(
                {"type": "websocket.close", "code": 1008, "reason": f"blocked by WAF rule {blocked.rule}"}
            )
        else:
            await send_error(
                send,
                Code.PERMISSION_DENIED,
                f"request blocked by WAF rule {blocked.rule}",
                request_id,
                details=[{"rule": blocked.rule, "where": blocked.where}],
            )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns the buffered messages first, then delegates (for http.disconnect)."""
    pending = iter(messages)

    async def replay() -> Message:
        message = next(pending, None)
        return message if message is not None else await receive()

    return replay
