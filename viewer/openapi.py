"""The OpenAPI 3.1 document, generated from the route table (paths, access rules) and the models each
handler method declares (``viewer.apidoc.op``): one source, no hand-kept copy."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from annotations.access import DATASET_ACTIONS, Action
from viewer.apidoc import ErrorOut, Op, operation
from viewer.rules import WRITE_METHODS, Rule

_NAMED = re.compile(r"\(\?P<(\w+)>")
REF = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API token (`lamella token create NAME`, or POST /api/tokens): "
                              "`Authorization: Bearer lmt_…`. Requests with a token need no XSRF header."},
    "cookie": {"type": "apiKey", "in": "cookie", "name": "lamella_signin",
               "description": "A browser sign-in (POST /api/sign-in)."},
    "xsrf": {"type": "apiKey", "in": "header", "name": "X-XSRFToken",
             "description": "With the sign-in cookie, writes must echo the `_xsrf` cookie's value in this header."},
}
TAGS = {"pages": "Pages", "docs": "API description", "accounts": "Accounts", "api": "Datasets",
        "curation": "Curation", "data": "Pixels", "segments": "Segments of label images",
        "annotations": "Annotations", "session_annotations": "Annotations in the viewer",
        "correlation": "Correlation", "crowd": "Citizen Science", "state_sync": "Neuroglancer state sync"}


def package_version() -> str:
    try:
        return version("lamella")
    except PackageNotFoundError:
        return "0+unknown"


def path_template(pattern: str) -> tuple[str, list[tuple[str, str]]]:
    """``/api/datasets/(?P<dataset_ref>…)`` → (``/api/datasets/{dataset_ref}``, [(name, regex)]).

    A named group may hold groups of its own (a region's ``(?:0|[1-9][0-9]{0,8})(?:_…){5}``)."""
    groups, parts, at = [], [], 0
    while (named := _NAMED.search(pattern, at)) is not None:
        end = _group_end(pattern, named.end())
        groups.append((named.group(1), pattern[named.end():end - 1]))
        parts += [pattern[at:named.start()], "{" + named.group(1) + "}"]
        at = end
    return "".join([*parts, pattern[at:]]), groups


def _group_end(pattern: str, index: int) -> int:
    """The index just past the ``)`` that closes the group whose body starts at ``index``."""
    depth = 1
    while depth:
        char = pattern[index]
        if char == "\\":
            index += 1  # an escaped character
        elif char == "[":  # a character class: its brackets and parentheses are literal
            index = pattern.index("]", index + 2 if pattern[index + 1] == "^" else index + 1)
        elif char in "()":
            depth += 1 if char == "(" else -1
        index += 1
    return index


def security(rule: Rule, method: str, action: Action) -> list[dict[str, list[str]]]:
    """Who may call: anyone (no credential needed), or an account by token or cookie (+ XSRF on writes)."""
    cookie = {"cookie": [], "xsrf": []} if method in WRITE_METHODS and rule.xsrf != "exempt" else {"cookie": []}
    signed = [{"bearer": []}, cookie]
    if rule.scope == "session":
        return [{}]  # the session token in the path is the credential
    if action in (Action.ANYONE, Action.READ):
        return [{}, *signed]
    return signed


def access_note(rule: Rule, action: Action) -> str:
    if rule.scope == "session":
        note = (f"Access: the viewer-session token is the credential; the session acts with the {action} rights "
                "of the account that opened it.")
    elif rule.scope == "shared":
        note = (f"Access: {action} the dataset of the shared view (a private dataset's views are 404 for anyone "
                "who may not read it).")
    elif action in DATASET_ACTIONS:
        note = f"Access: {action} the dataset (a private dataset is 404 for anyone who may not read it)."
    else:
        note = {Action.ANYONE: "Access: anyone.", Action.SIGNED_IN: "Access: any account.",
                Action.CREATE_DATASETS: "Access: curators and admins.",
                Action.MANAGE_ACCOUNTS: "Access: admins."}[action]
    for flag, needed in rule.escalations.items():
        note += f" With `{flag}`: {needed} the dataset."
    return note


def document(routes: list[Any]) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for ``routes`` (``viewer.app.routes()``)."""
    models: dict[tuple[type[BaseModel], str], None] = {(ErrorOut, "serialization"): None}
    operations: list[tuple[str, str, Any, Op, list[tuple[str, str]]]] = []
    for route in routes:
        path, groups = path_template(route.pattern)
        for method in route.rule.methods:
            declared = operation(route.handler, method)
            operations.append((path, method, route, declared, groups))
            if declared.body is not None:
                models[(declared.body, "validation")] = None
            if isinstance(declared.response, type):
                models[(declared.response, "serialization")] = None
    _, definitions = models_json_schema(list(models), ref_template=REF)
    schemas = definitions.get("$defs", {})

    def schema_of(model: type[BaseModel] | dict[str, Any] | None) -> dict[str, Any]:
        if model is None:
            return {}
        return {"$ref": REF.format(model=model.__name__)} if isinstance(model, type) else model

    paths: dict[str, dict[str, Any]] = {}
    for path, method, route, declared, groups in operations:
        action = route.rule.methods[method]
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": f"^{regex}$"}} for name, regex in groups]
        if declared.query is not None:
            query_schema = declared.query.model_json_schema()
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        responses: dict[str, Any] = {}
        if isinstance(declared.content, dict):
            content = {media: {"schema": schema} for media, schema in declared.content.items()}
        else:
            types = (declared.content,) if isinstance(declared.content, str) else declared.content
            content = {media: {"schema": schema_of(declared.response)} for media in types}
        if declared.status < 400:
            success: dict[str, Any] = {"description": declared.summary or "success"}
            if declared.response is not None and declared.status != 204:
                success["content"] = content
            responses[str(declared.status)] = success
        for status, description in declared.also.items():
            entry: dict[str, Any] = {"description": description}
            if status not in (204, 304) and declared.response is not None:
                entry["content"] = content
            responses[str(status)] = entry
        responses["default"] = {"description": "an error: the one JSON error body",
                                "content": {"application/json": {"schema": schema_of(ErrorOut)}}}
        entry = {
            "operationId": f"{route.name}-{method.lower()}",
            "summary": declared.summary or route.name,
            "description": access_note(route.rule, action),
            "tags": [TAGS.get(route.handler.__module__.rsplit(".", 1)[-1], "Other")],
            "parameters": parameters,
            "responses": responses,
            "security": security(route.rule, method, action),
            "x-lamella-rule": f"{route.rule.scope}:{action}",
        }
        if declared.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of(declared.body)}},
                "description": f"JSON, at most {route.rule.body_limit} bytes",
            }
        elif declared.raw_body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {media: {"schema": schema} for media, schema in declared.raw_body.items()},
                "description": f"a file, at most {route.rule.body_limit} bytes",
            }
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lamella",
            "version": package_version(),
            "summary": "Serve, correlate and annotate volume electron microscopy in the browser.",
            "description": "Every error is JSON: `{\"ok\": false, \"status\", \"code\", \"message\"}`. "
                           "A private dataset is 404 for anyone who may not read it.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }
