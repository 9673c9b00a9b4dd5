"""The (launchpad.api.v1.edge) rule: how the middleware treats the requests of one route, and where it is.

Rules are per route, that is per verb and path: FindRoute (edge/transcoding/table.py) matches each request
once, before any middleware reads it, exactly as the router will, and leaves the matched route's rule in the
scope. A request no route serves in full (unknown path, wrong verb, docs) gets NO_RULE, the strictest.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope


@dataclass(frozen=True, slots=True)
class WafField:
    """Which WAF rules check one top-level request field: `only` these (when set), minus `skip`."""

    only: frozenset[str] = frozenset()
    skip: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A method's (launchpad.api.v1.edge) option: how the middleware treats the requests of its routes."""

    waf_fields: tuple[tuple[str, WafField], ...] = ()
    waf_skip: bool = False  # opaque data authorized by a signed URL: not inspected
    raw_body: bool = False  # any content type
    upload_body: bool = False  # the upload body limit instead of the API limit


NO_RULE = RouteRule()  # every WAF rule, JSON bodies only, the API body limit

RULE_KEY = "launchpad.route_rule"


def rule_of(scope: Scope) -> RouteRule:
    """The rule FindRoute left in the scope; NO_RULE when it found no route (or did not run)."""
    rule = scope.get(RULE_KEY)
    return rule if isinstance(rule, RouteRule) else NO_RULE
