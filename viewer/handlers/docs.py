"""The API described: the OpenAPI document (generated from the route table) and its browsable page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from viewer.apidoc import ANY_JSON, op
from viewer.handlers.base import BaseHandler


class OpenApiHandler(BaseHandler):
    def initialize(self, services, rule, build: Callable[[], dict[str, Any]]) -> None:  # type: ignore[override]
        super().initialize(services, rule)
        self.build = build

    @op(summary="This API's OpenAPI 3.1 document", response=ANY_JSON)
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.write_json(self.build())
