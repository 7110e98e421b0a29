"""HTML pages and their assets (plain files in static/, installed as ``viewer.static``) and the
bundled Neuroglancer client."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import importlib.resources
import re
from pathlib import Path, PurePosixPath

from tornado.web import HTTPError

from viewer.apidoc import BINARY, FILE_TYPES, op
from viewer.handlers.base import BaseHandler


def package_folder(package: str, *parts: str) -> Path:
    """A folder of an installed package, found through the package (pip unpacks wheels: a real folder)."""
    return Path(str(importlib.resources.files(package).joinpath(*parts)))


STATIC_DIR = package_folder("viewer.static")  # the checkout's static/ (setup.cfg maps it)
NEUROGLANCER_CLIENT = package_folder("neuroglancer.static", "client")
_CLIENT_FILE = re.compile(r"^[a-z0-9][a-zA-Z0-9_\-.]*\.(?:js|map|css|wasm|html)$", re.ASCII)
_COMPRESSIBLE = {".js", ".css", ".html", ".map", ".wasm", ".json", ".svg"}
_MIME = {".js": "application/javascript", ".mjs": "application/javascript", ".css": "text/css",
         ".html": "text/html; charset=utf-8", ".map": "application/json", ".wasm": "application/wasm",
         ".json": "application/json", ".png": "image/png", ".svg": "image/svg+xml"}


class PageHandler(BaseHandler):
    """Serves one HTML file from static/; the page's ES module fetches the API.

    A dataset page's rule has already answered 404 for a dataset the actor may not read.
    """

    def initialize(self, services, rule, page: str) -> None:  # type: ignore[override]
        super().initialize(services, rule)
        self.page = page

    @op(summary="An HTML page (catalog, dataset viewer, sign-in); sets the _xsrf cookie", response={"type": "string"},
        content="text/html")
    async def get(self, dataset_ref: str | None = None, project: str | None = None) -> None:
        self.xsrf_token  # noqa: B018 (sets the _xsrf cookie the page's scripts send back on writes)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(_read_cached(STATIC_DIR / self.page))


class AssetHandler(BaseHandler):
    """Our own CSS, ES modules and vendored viewers under /static/, revalidated by ETag."""

    def initialize(self, services, rule, path: str) -> None:  # type: ignore[override]
        super().initialize(services, rule)
        self.root = Path(path)

    @op(summary="A static asset of the pages (CSS, ES module, vendored API viewer)", response=BINARY,
        content=FILE_TYPES, also={304: "not modified"})
    async def get(self, path: str) -> None:
        parts = PurePosixPath(path).parts
        if not parts or any(part in (".", "..") or part.startswith(".") for part in parts):
            raise HTTPError(404)
        file = self.root.joinpath(*parts)
        if file.suffix not in _MIME or not file.is_file():
            raise HTTPError(404)
        body = _read_cached(file)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Type", _MIME[file.suffix])
        self.set_header("ETag", '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.finish(body)


class NeuroglancerClientHandler(BaseHandler):
    """The client of the neuroglancer wheel under /v/<token>/ (it reads its token from the URL).

    Sent gzipped to browsers that take it (all do): the scripts it starts with are 1.5 MB as they stand,
    0.43 MB gzipped, which on a slow connection is most of the time a viewer takes to open.
    """

    @op(summary="Neuroglancer's client (from the neuroglancer wheel) for a viewer session", response=BINARY,
        content=FILE_TYPES)
    async def get(self, token: str, name: str) -> None:
        name = name or "index.html"
        if not _CLIENT_FILE.match(name):
            raise HTTPError(404)
        if name == "index.html":
            self.set_header("Cache-Control", "no-cache")
        else:
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")  # content-hashed
        path = NEUROGLANCER_CLIENT / name
        if not path.is_file():
            raise HTTPError(404)
        self.set_header("Content-Type", _MIME[path.suffix])
        if path.suffix in _COMPRESSIBLE:
            self.set_header("Vary", "Accept-Encoding")
            if "gzip" in self.request.headers.get("Accept-Encoding", ""):
                self.set_header("Content-Encoding", "gzip")
                self.finish(await asyncio.to_thread(_gzipped_cached, path))  # compressed once, off the loop
                return
        self.finish(_read_cached(path))


@functools.lru_cache(maxsize=128)
def _read_cached(path: Path) -> bytes:
    # Pages, assets and the client's content-hashed files do not change while we run.
    return path.read_bytes()


@functools.lru_cache(maxsize=64)
def _gzipped_cached(path: Path) -> bytes:
    # Compressed once per file and process (under 0.1 s for the largest), at the highest level.
    return gzip.compress(_read_cached(path), compresslevel=9, mtime=0)
