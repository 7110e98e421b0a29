"""The app factory and the one route table."""

from __future__ import annotations

from typing import Any

from tornado.web import Application, url

from viewer.handlers import api, correlation, data, pages, state_sync
from viewer.handlers.base import NotFoundHandler
from viewer.services import Services

DATASET = r"(?P<dataset_ref>[A-Za-z0-9_\-]+)"
IMAGE = r"(?P<image_name>[A-Za-z0-9_\-]+)"
TOKEN = r"(?P<token>[A-Za-z0-9_\-]+)"
TRANSFORM = r"(?P<transform_id>[0-9]{1,9})"
IMAGE_BASE = rf"/api/datasets/{DATASET}/images/{IMAGE}"
PRECOMPUTED_CHUNK = r"precomputed/(?P<scale_key>[^/]+)/(?P<chunk_name>[^/]+)"  # plain and warped alike


def routes(services: Services) -> list[tuple[str, type, dict[str, Any], str]]:
    """(pattern, handler, initialize arguments, route name) for every path we answer."""
    inject = {"services": services}
    return [
        (r"/", pages.PageHandler, {**inject, "page": "index.html"}, "catalog-page"),
        (rf"/datasets/{DATASET}", pages.PageHandler, {**inject, "page": "dataset.html"}, "dataset-page"),
        (r"/static/(?P<path>.+)", pages.AssetHandler, {"path": str(pages.STATIC_DIR)}, "static"),
        (r"/api/datasets", api.DatasetsHandler, inject, "datasets"),
        (rf"/api/datasets/{DATASET}", api.DatasetHandler, inject, "dataset"),
        (rf"/api/datasets/{DATASET}/images", api.ImagesHandler, inject, "images"),
        (IMAGE_BASE, api.ImageHandler, inject, "image"),
        (rf"/api/datasets/{DATASET}/sessions", api.DatasetSessionsHandler, inject, "dataset-sessions"),
        (rf"/api/sessions/{TOKEN}", api.SessionHandler, inject, "session"),
        (rf"{IMAGE_BASE}/precomputed/info", data.PrecomputedInfoHandler, inject, "precomputed-info"),
        (rf"{IMAGE_BASE}/{PRECOMPUTED_CHUNK}", data.PrecomputedChunkHandler, inject, "precomputed-chunk"),
        (rf"{IMAGE_BASE}/zarr/(?P<key>.*)", data.ZarrStoreHandler, inject, "zarr-store"),
        # Correlative registration: transforms into the dataset's reference space.
        (rf"{IMAGE_BASE}/transform", correlation.TransformHandler, inject, "transform"),
        (rf"{IMAGE_BASE}/landmarks", correlation.LandmarksHandler, inject, "landmarks"),
        (rf"{IMAGE_BASE}/warped/{TRANSFORM}/precomputed/info", correlation.WarpedInfoHandler, inject, "warped-info"),
        (rf"{IMAGE_BASE}/warped/{TRANSFORM}/{PRECOMPUTED_CHUNK}", correlation.WarpedChunkHandler, inject,
         "warped-chunk"),
        (rf"/api/sessions/{TOKEN}/display", correlation.SessionDisplayHandler, inject, "session-display"),
        (rf"/api/sessions/{TOKEN}/landmark-layers", correlation.SessionLandmarkLayersHandler, inject,
         "session-landmark-layers"),
        (rf"/api/sessions/{TOKEN}/register", correlation.SessionRegisterHandler, inject, "session-register"),
        # Neuroglancer's Python-integration client and its state-sync protocol.
        (rf"/v/{TOKEN}/(?P<name>[^/]*)", pages.NeuroglancerClientHandler, inject, "neuroglancer-client"),
        (rf"/events/{TOKEN}", state_sync.EventsHandler, inject, "events"),
        (rf"/state/{TOKEN}", state_sync.SetStateHandler, inject, "state"),
        (rf"/action/{TOKEN}", state_sync.ActionHandler, inject, "action"),
        (rf"/credentials/{TOKEN}", state_sync.CredentialsHandler, inject, "credentials"),
    ]


def make_app(services: Services, **tornado_settings: Any) -> Application:
    return Application(
        [url(pattern, handler, kwargs, name=name) for pattern, handler, kwargs, name in routes(services)],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        compress_response=False,
        **tornado_settings,
    )
