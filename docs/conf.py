"""The user guide (Sphinx with MyST Markdown). Build: ``make docs``, or
``sphinx-build -W --keep-going -b html docs build/docs`` (warnings are errors; tests/test_docs.py
builds it too). The CLI and HTTP API references are made from the code at build time.
"""

import sys
from importlib.metadata import version as package_version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "Lamella"
author = "The Lamella authors"
release = package_version("lamella")
version = release

extensions = ["myst_parser", "sphinx_click", "lamella_reference"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext", "nginx", "images"]
myst_heading_anchors = 3  # links such as access.md#roles

html_theme = "alabaster"
html_title = f"Lamella {release}"
html_theme_options = {
    "description": "Volume EM in the browser: serve, correlate, annotate",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path: list[str] = []
smartquotes = False  # keep "--option" as typed in help texts
