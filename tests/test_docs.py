"""The user guide: built with warnings as errors, with every command, route and setting in its references,
and the README's links into it intact."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import click
import pytest

from tests.conftest import ROOT
from viewer.app import openapi_document
from viewer.cli import main
from viewer.config import ENV_PREFIX, Settings


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide as ``make docs`` builds it (Sphinx keeps its doctrees in the output folder)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                             str(ROOT / "docs"), str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    return out


def text_of(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


def test_every_command_is_in_the_cli_reference(site: Path) -> None:
    page = (site / "reference" / "cli.html").read_text()
    text = text_of(site / "reference" / "cli.html")
    paths = list(command_paths(main))
    assert len(paths) > 20  # the groups' subcommands are walked too
    for path in paths:
        assert f'<section id="lamella-{"-".join(path)}"' in page, f"lamella {' '.join(path)} has no section"
        assert f"lamella {' '.join(path)} [OPTIONS]" in text, f"lamella {' '.join(path)} has no usage line"


def test_every_operation_is_in_the_http_reference(site: Path) -> None:
    page = (site / "reference" / "http-api.html").read_text()
    signatures = re.findall(r'<dt class="sig sig-object http"[^>]*>(.*?)</dt>', page, re.S)
    shown = {tuple(html.unescape(re.sub(r"<[^>]+>", "", s)).strip().rstrip("¶").split()) for s in signatures}
    document = openapi_document()
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == shown


def test_every_setting_is_in_the_deployment_page(site: Path) -> None:
    text = text_of(site / "deployment.html")
    for field in fields(Settings):
        assert f"{ENV_PREFIX}{field.name.upper()}" in text


def test_readme_links_into_the_guide_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target]
    assert "docs/images/dataset-page.png" in local  # the screenshot the browser test keeps
    assert any(target.startswith("docs/") and target.endswith(".md") for target in local)
    for target in local:
        assert (ROOT / target).exists(), f"README links to a missing {target}"
