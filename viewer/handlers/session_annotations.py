"""A viewer session's database annotation layers, and shared views: thin handlers over
``annotations.viewer_annotations``."""

from __future__ import annotations

from urllib.parse import urlencode

from pydantic import BaseModel

from annotations.viewer_annotations import SessionAnnotationsOut
from viewer.apidoc import op
from viewer.errors import WebError
from viewer.handlers.api import origin_of
from viewer.handlers.base import BaseHandler


class SharedViewOut(BaseModel):
    code: str
    url: str  # the short link: opening it starts a new session from this copy


class SessionHandlerBase(BaseHandler):
    def require_dataset(self) -> None:
        if self.dataset_access is None:
            raise WebError(409, "no_dataset", "this viewer session shows no dataset")


class SessionAnnotationsHandler(SessionHandlerBase):
    @op(summary="The session's annotation layers: what its edit layers saved (database ids), what they could not "
                "save and why", response=SessionAnnotationsOut)
    async def get(self, token: str) -> None:
        report = await self.services.call(self.services.viewer_annotations.report, token, self.owner,
                                          self.dataset_access)
        self.write_json(report)

    @op(summary="Add the dataset's annotation layers the session lacks (made since it opened); open viewers follow",
        response=SessionAnnotationsOut)
    async def post(self, token: str) -> None:
        self.require_dataset()
        report = await self.services.call(self.services.viewer_annotations.show_layers, token, self.owner,
                                          self.dataset_access, origin_of(self))
        self.services.session_watch.changed(token)
        self.write_json(report)


class SessionShareHandler(SessionHandlerBase):
    @op(summary="Freeze the session's current view (layers, position, zoom, selection) behind a short link",
        response=SharedViewOut, status=201)
    async def post(self, token: str) -> None:
        self.require_dataset()
        shared = await self.services.call(self.services.viewer_annotations.share, token, self.owner,
                                          self.dataset_access)
        url = f"{origin_of(self)}{self.reverse_url('shared-view', shared.code)}"
        self.write_json(SharedViewOut(code=shared.code, url=url), 201)


class SharedViewHandler(BaseHandler):
    @op(summary="A shared view: redirects to its dataset's page, which starts a new session from the frozen copy",
        response=None, status=302)
    async def get(self, code: str) -> None:
        assert self.dataset_access is not None
        page = self.reverse_url("dataset-page", self.dataset_access.id)
        self.set_header("Cache-Control", "no-store")
        self.redirect(f"{page}?{urlencode({'view': code})}")
