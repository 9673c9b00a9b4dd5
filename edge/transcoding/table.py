"""The route table: contract routes found in one step, once per request (FindRoute, outermost, which also
leaves the route's edge rule for the middleware), and the ASGI layer that sends requests straight to them."""

from __future__ import annotations

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.transcoding.rules import NO_RULE, RULE_KEY, RouteRule


class RouteTable(BaseRoute):
    """Many routes as one router entry: literal paths found by a dict lookup, templates tried in order.

    Starlette's router tries every route's regex in turn; with dozens of contract routes that scan would cost
    more than the rest of the edge's routing. Method mismatches still answer 405 through the matched Route.
    """

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._literal: dict[str, list[Route]] = {}
        self._templated: list[Route] = []
        for route in routes:
            if route.param_convertors:
                self._templated.append(route)
            else:
                self._literal.setdefault(route.path, []).append(route)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        partial = None
        for candidates in (self._literal.get(_route_path(scope), ()), self._templated):
            for route in candidates:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    return match, {**child, _MATCHED: route}
                if match is Match.PARTIAL and partial is None:
                    partial = {**child, _MATCHED: route}
        return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope[_MATCHED].handle(scope, receive, send)

    def find(self, scope: Scope) -> tuple[Match, Scope, RouteRule]:
        """The match and the rule of the route that serves the request in full (NO_RULE for none): its
        endpoint's `rule_for(http_method)`, the rule of the binding that answers that verb (RpcEndpoint,
        ObjectEndpoint); endpoints without one (/health, /metrics) have NO_RULE."""
        match, child = self.matches(scope)
        rule_for = getattr(child.get("endpoint"), "rule_for", None) if match is Match.FULL else None
        return match, child, rule_for(scope["method"]) if rule_for is not None else NO_RULE


_MATCHED = "launchpad.route"
_FOUND = "launchpad.route_match"


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class FindRoute:
    """Outermost but the error guard: matches the request once, as the router will (root_path honoured,
    literal paths before templates in the table's order), and leaves the route's edge rule in the scope for
    the middleware (rules.rule_of) and the match for DirectRoutes. The middleware in between never rewrites
    the path, so the route they see is the route that serves the request."""

    def __init__(self, app: ASGIApp, table: RouteTable) -> None:
        self.app, self.table = app, table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match, child, rule = self.table.find(scope)
            scope[RULE_KEY] = rule
            scope[_FOUND] = (match, child)
        await self.app(scope, receive, send)


class DirectRoutes:
    """Contract routes (and /health, /metrics) and WebSocket paths straight to their endpoint; the rest to
    FastAPI. (FastAPI's exception layer would otherwise wrap every frame a socket sends.)"""

    def __init__(self, app: ASGIApp, table: RouteTable, sockets: dict[str, ASGIApp]) -> None:
        self.app, self.table, self.sockets = app, table, sockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = scope.get(_FOUND)
            match, child = found if found is not None else self.table.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                await child["endpoint"](scope, receive, send)
                return
        elif scope["type"] == "websocket" and (socket := self.sockets.get(scope["path"])) is not None:
            await socket(scope, receive, send)
            return
        await self.app(scope, receive, send)
