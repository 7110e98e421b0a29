"""Access rules that route table entries declare: what each method of a route asks of the actor.

A rule names a scope (the whole server, the dataset in the path, the viewer session whose token
is in the path, or the dataset of the shared view whose code is in the path), the action each HTTP
method performs (HEAD follows GET; OPTIONS is the CORS preflight and needs nothing), body flags that
need more (a landmark fit that also saves needs ``curate``), whether XSRF protection applies to
cookie-authenticated writes, and how large a request body may be. ``annotations.access`` decides; the
base handler applies the rule before a request body is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from annotations.access import DATASET_ACTIONS, Action

KiB = 1024
MiB = 1024 * KiB
DEFAULT_BODY_LIMIT = 64 * KiB
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Scope = Literal["server", "dataset", "session", "shared"]
Xsrf = Literal["cookie", "always", "exempt"]


@dataclass(frozen=True)
class Rule:
    scope: Scope
    methods: Mapping[str, Action]
    escalations: Mapping[str, Action] = field(default_factory=dict)
    xsrf: Xsrf = "cookie"  # cookie: required when the request carries a sign-in cookie (not a bearer token)
    body_limit: int = DEFAULT_BODY_LIMIT

    def __post_init__(self) -> None:
        for method, action in self.methods.items():
            if method != method.upper():
                raise ValueError(f"method {method!r} must be upper case")
            if (action in DATASET_ACTIONS) != (self.scope != "server"):
                raise ValueError(f"{method} {action} does not fit a {self.scope} rule")
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))
        object.__setattr__(self, "escalations", MappingProxyType(dict(self.escalations)))

    def action(self, method: str) -> Action | None:
        """The action ``method`` performs (None: the route does not answer it)."""
        return self.methods.get("GET" if method == "HEAD" else method)

    @property
    def allowed_methods(self) -> list[str]:
        """Methods for the ``Allow`` header, in a stable order."""
        methods = set(self.methods)
        if "GET" in methods:
            methods.add("HEAD")
        order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return [m for m in order if m in methods]


def server(xsrf: Xsrf = "cookie", body_limit: int = DEFAULT_BODY_LIMIT, **methods: Action) -> Rule:
    return Rule("server", methods, xsrf=xsrf, body_limit=body_limit)


def dataset(escalations: Mapping[str, Action] | None = None, body_limit: int = DEFAULT_BODY_LIMIT,
            xsrf: Xsrf = "cookie", **methods: Action) -> Rule:
    return Rule("dataset", methods, escalations or {}, xsrf=xsrf, body_limit=body_limit)


def session(escalations: Mapping[str, Action] | None = None, xsrf: Xsrf = "cookie",
            body_limit: int = DEFAULT_BODY_LIMIT, **methods: Action) -> Rule:
    return Rule("session", methods, escalations or {}, xsrf=xsrf, body_limit=body_limit)


def shared(body_limit: int = DEFAULT_BODY_LIMIT, **methods: Action) -> Rule:
    """The dataset of the shared view whose code is in the path: a private one is 404 for non-readers."""
    return Rule("shared", methods, body_limit=body_limit)


READ, ANNOTATE, CURATE = Action.READ, Action.ANNOTATE, Action.CURATE
ANYONE, SIGNED_IN = Action.ANYONE, Action.SIGNED_IN
CREATE_DATASETS, MANAGE_ACCOUNTS = Action.CREATE_DATASETS, Action.MANAGE_ACCOUNTS

PUBLIC_PAGE = server(GET=ANYONE)
