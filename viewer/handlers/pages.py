"""HTML pages (plain files in static/) and the bundled Neuroglancer client."""

from __future__ import annotations

import functools
import importlib.resources
import re
from pathlib import Path

from tornado.web import HTTPError, StaticFileHandler

from viewer.handlers.base import BaseHandler

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
NEUROGLANCER_CLIENT = Path(str(importlib.resources.files("neuroglancer.static") / "client"))
_CLIENT_FILE = re.compile(r"^[a-z0-9][a-zA-Z0-9_\-.]*\.(?:js|map|css|wasm|html)$")


class PageHandler(BaseHandler):
    """Serves one HTML file from static/; the page's ES module fetches the API."""

    def initialize(self, services, page: str) -> None:  # type: ignore[override]
        super().initialize(services)
        self.page = page

    async def get(self, dataset_ref: str | None = None) -> None:
        if dataset_ref is not None:  # a dataset page: 404 here, not a blank page, for an unknown dataset
            await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish((STATIC_DIR / self.page).read_bytes())


class NeuroglancerClientHandler(BaseHandler):
    """The client of the neuroglancer wheel under /v/<token>/ (it reads its token from the URL)."""

    async def get(self, token: str, name: str) -> None:
        name = name or "index.html"
        if not _CLIENT_FILE.match(name):
            raise HTTPError(404, reason=f"no client file {name!r}")
        if name == "index.html":
            await self.services.call(self.services.viewer_sessions.generations, token)
            self.set_header("Cache-Control", "no-cache")
        else:
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")  # content-hashed
        path = NEUROGLANCER_CLIENT / name
        if not path.is_file():
            raise HTTPError(404, reason=f"no client file {name!r}")
        self.set_header("Content-Type", _mime(name))
        self.finish(_read_cached(path))


_MIME = {".js": "application/javascript", ".css": "text/css", ".html": "text/html; charset=utf-8",
         ".map": "application/json", ".wasm": "application/wasm"}


def _mime(name: str) -> str:
    return _MIME[Path(name).suffix]


@functools.lru_cache(maxsize=64)
def _read_cached(path: Path) -> bytes:
    # The client's files are content-hashed and never change while we run.
    return path.read_bytes()


class AssetHandler(StaticFileHandler):
    """Our own CSS and ES modules, with the JSON 404 of every other path."""

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish({"ok": False, "status": status_code, "code": "not_found" if status_code == 404 else "http_error",
                     "message": self._reason})
