"""Reference pages made from the code at build time: the HTTP API from the OpenAPI document that the
server generates from its route table, and the settings from ``viewer.config.Settings``.

Used from the guide's Markdown pages inside ``{eval-rst}`` blocks (the directives produce
reStructuredText): ``.. lamella-openapi::`` and ``.. lamella-settings::``.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, fields
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles
from sphinxcontrib.openapi.renderers import HttpdomainRenderer


class OpenApiDirective(SphinxDirective):
    """Every operation of Lamella's OpenAPI document, a section per tag (in ``viewer.openapi.TAGS`` order).

    The document's ``default`` responses (the one JSON error body) are left out here: the page states
    the error body once, and httpdomain takes numeric status codes only.
    """

    def run(self) -> list[nodes.Node]:
        from viewer.app import openapi_document
        from viewer.openapi import TAGS

        document = openapi_document()
        tagged = {tag for item in document["paths"].values() for operation in item.values()
                  for tag in operation.get("tags", ())}
        if tagged - set(TAGS.values()):
            raise self.error(f"operations tagged {sorted(tagged - set(TAGS.values()))} would be left out")
        sections: list[nodes.Node] = []
        for tag in TAGS.values():
            paths: dict[str, Any] = {}
            for path, item in document["paths"].items():
                operations = {method: copy.deepcopy(operation) for method, operation in item.items()
                              if tag in operation.get("tags", ())}
                for operation in operations.values():
                    operation["responses"].pop("default", None)
                if operations:
                    paths[path] = operations
            if not paths:
                continue
            section = nodes.section(ids=[nodes.make_id("api-" + tag)])
            section += nodes.title(text=tag)
            spec = {**copy.deepcopy({k: v for k, v in document.items() if k != "paths"}), "paths": paths}
            renderer = HttpdomainRenderer(self.state, {"uri": "file:///openapi.json", "markup": "commonmark"})
            section.extend(renderer.render(spec))
            sections.append(section)
        return sections


class SettingsDirective(SphinxDirective):
    """A table of every setting: its ``LAMELLA_*`` variable, default and meaning."""

    def run(self) -> list[nodes.Node]:
        from viewer.config import ENV_PREFIX, Settings

        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 15 55", "",
                 "   * - variable", "     - default", "     - meaning"]
        for field in fields(Settings):
            default = "" if field.default is MISSING or field.default is None else f"``{field.default}``"
            lines += [f"   * - ``{ENV_PREFIX}{field.name.upper()}``", f"     - {default}",
                      f"     - {field.metadata.get('help', '')}"]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, "<lamella-settings>"), container)
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinxcontrib.openapi")  # httpdomain and its field types
    app.add_directive("lamella-openapi", OpenApiDirective)
    app.add_directive("lamella-settings", SettingsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
