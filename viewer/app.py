"""The app factory and the one route table: each route declares its access rule beside its pattern."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from tornado.web import Application, url

from viewer.handlers import (
    accounts,
    annotations,
    api,
    correlation,
    crowd,
    curation,
    data,
    docs,
    pages,
    segments,
    session_annotations,
    state_sync,
)
from viewer.handlers.base import NotFoundHandler
from viewer.rules import (
    ANNOTATE,
    ANYONE,
    CREATE_DATASETS,
    CURATE,
    MANAGE_ACCOUNTS,
    PUBLIC_PAGE,
    READ,
    SIGNED_IN,
    KiB,
    MiB,
    Rule,
    dataset,
    server,
    session,
    shared,
)
from viewer.services import Services

# Path parts are bounded here, in ASCII: anything longer or stranger matches no route (404).
NAME = r"[A-Za-z0-9_\-]{1,64}"
DATASET = rf"(?P<dataset_ref>{NAME})"
IMAGE = rf"(?P<image_name>{NAME})"
TOKEN = rf"(?P<token>{NAME})"
SHARE_CODE = r"(?P<code>[A-Za-z0-9_\-]{8,32})"  # annotations.shared_views.CODE
ID = r"[1-9][0-9]{0,9}"  # canonical decimal: one spelling per id
TRANSFORM = rf"(?P<transform_id>{ID})"
TOKEN_ID = rf"(?P<token_id>{ID})"
ACCOUNT = r"(?P<account>[a-z][a-z0-9_.\-]{0,63})"
IMAGE_BASE = rf"/api/datasets/{DATASET}/images/{IMAGE}"
LAYER_BASE = rf"/api/datasets/{DATASET}/annotation-layers/(?P<layer_id>{ID})"
ANNOTATION_BASE = rf"{LAYER_BASE}/annotations/(?P<annotation_id>{ID})"
PROJECT_BASE = rf"/api/datasets/{DATASET}/projects/(?P<project>[a-z][a-z0-9_\-]{{0,63}})"
TASK_ID = rf"(?P<task_id>{ID})"
REGION = r"(?P<region>[0-9]{1,9}(?:_[0-9]{1,9}){5})"  # x0_y0_z0_x1_y1_z1; tiling.regions wants each canonical
MESH_BUILD = r"precomputed/mesh/(?P<build>[0-9a-f]{12})"  # tiling.meshes names each build with 12 hex digits
SEGMENT = r"(?P<segment>[1-9][0-9]{0,19})"  # a segment id, canonical decimal (uint64)
MESH_SHARD = r"(?P<shard>[0-9a-f]{1,16}\.shard)"
PRECOMPUTED_CHUNK = r"precomputed/(?P<scale_key>[^/]{1,20})/(?P<chunk_name>[^/]{1,100})"  # plain and warped alike
STORED_KEY = r"(?P<key>.{1,1024})"
# A layer's annotations of one type, in one view (``annotations.views``: "current" or filters), as a
# Neuroglancer precomputed annotation source.
ANNOTATION_SOURCE = (rf"{LAYER_BASE}/precomputed/(?P<kind>point|line|axis_aligned_bounding_box|ellipsoid|polyline)"
                     r"/(?P<view>[A-Za-z0-9_.,=\-]{1,400})")

STATE_BODY = 4 * MiB  # a viewer state (Neuroglancer's own, or PUT through the API)
TRANSFORM_BODY = 4 * MiB  # a transform file (matrices, landmark lists, eC-CLEM XML)
LANDMARKS_BODY = 1 * MiB  # up to 2000 landmark pairs
ANNOTATIONS_BODY = 64 * MiB  # a bulk create: 100,000 annotations with labels and properties
IMPORT_BODY = 256 * MiB  # an import file (all or none): 250,000 annotations, polylines of many points among them
ANNOTATION_BODY = 1 * MiB  # one annotation (a polyline of up to 10,000 points)
LAYER_BODY = 1 * MiB  # a layer's declaration (up to 1,000 labels, 32 properties with enums)
PROJECT_BODY = 1 * MiB  # a project with its workflow, tutorial and labels
SUBMISSION_BODY = 1 * MiB  # 500 marks, or outlines of up to 2,000 points
GOLD_BODY = 1 * MiB
METADATA_BODY = 512 * KiB  # a dataset's title and description (20,000 characters, escaped)


@dataclass(frozen=True)
class Route:
    pattern: str
    handler: type
    rule: Rule
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def routes() -> list[Route]:
    """Every path we answer, with its handler, access rule and name."""
    fit = {"save": CURATE}  # a fit that is also saved changes the dataset
    return [
        # Derived data under precomputed/ (meshes, segment properties) before precomputed-chunk, whose pattern
        # would take these paths.
        Route(rf"{IMAGE_BASE}/{MESH_BUILD}/{MESH_SHARD}", data.MeshShardHandler, dataset(GET=READ), "mesh-shard"),
        Route(rf"{IMAGE_BASE}/{MESH_BUILD}/info", data.MeshInfoHandler, dataset(GET=READ), "mesh-info"),
        Route(rf"{IMAGE_BASE}/precomputed/segment_properties/info", segments.SegmentPropertiesHandler,
              dataset(GET=READ), "segment-properties"),
        Route(rf"{IMAGE_BASE}/region/{REGION}/{PRECOMPUTED_CHUNK}", crowd.RegionChunkHandler, dataset(GET=READ),
              "region-chunk"),
        Route(rf"{IMAGE_BASE}/region/{REGION}/precomputed/info", crowd.RegionInfoHandler, dataset(GET=READ),
              "region-info"),
        # Pixels first: Tornado tries the patterns in order, and a viewer asks for chunks most.
        Route(rf"{IMAGE_BASE}/{PRECOMPUTED_CHUNK}", data.PrecomputedChunkHandler, dataset(GET=READ),
              "precomputed-chunk"),
        Route(rf"{IMAGE_BASE}/zarr/{STORED_KEY}", data.ZarrStoreHandler, dataset(GET=READ), "zarr-store"),
        Route(rf"{IMAGE_BASE}/precomputed/info", data.PrecomputedInfoHandler, dataset(GET=READ), "precomputed-info"),
        Route(rf"{IMAGE_BASE}/meshes/{SEGMENT}", data.SurfaceHandler, dataset(GET=READ), "segment-surface"),
        Route(rf"{IMAGE_BASE}/stored-access", data.StoredAccessHandler, dataset(GET=READ), "stored-access"),
        Route(rf"{IMAGE_BASE}/warped/{TRANSFORM}/precomputed/info", correlation.WarpedInfoHandler,
              dataset(GET=READ), "warped-info"),
        Route(rf"{IMAGE_BASE}/warped/{TRANSFORM}/{PRECOMPUTED_CHUNK}", correlation.WarpedChunkHandler,
              dataset(GET=READ), "warped-chunk"),
        # Pages
        Route(r"/", pages.PageHandler, PUBLIC_PAGE, "catalog-page", {"page": "index.html"}),
        Route(rf"/datasets/{DATASET}", pages.PageHandler, dataset(GET=READ), "dataset-page",
              {"page": "dataset.html"}),
        Route(rf"/datasets/{DATASET}/projects/(?P<project>[a-z][a-z0-9_\-]{{0,63}})", pages.PageHandler,
              dataset(GET=READ), "project-page", {"page": "project.html"}),
        Route(rf"/datasets/{DATASET}/projects/(?P<project>[a-z][a-z0-9_\-]{{0,63}})/dashboard", pages.PageHandler,
              dataset(GET=READ), "dashboard-page", {"page": "dashboard.html"}),
        Route(r"/sign-in", pages.PageHandler, PUBLIC_PAGE, "sign-in-page", {"page": "sign-in.html"}),
        Route(r"/api/docs", pages.PageHandler, PUBLIC_PAGE, "api-docs-page", {"page": "api.html"}),
        Route(r"/api/openapi.json", docs.OpenApiHandler, PUBLIC_PAGE, "openapi", {"build": openapi_document}),
        Route(r"/static/(?P<path>[A-Za-z0-9_\-./]{1,200})", pages.AssetHandler, PUBLIC_PAGE, "static",
              {"path": str(pages.STATIC_DIR)}),
        # Who is asking
        Route(r"/api/me", accounts.MeHandler, server(GET=ANYONE), "me"),
        Route(r"/api/sign-in", accounts.SignInHandler, server(POST=ANYONE, xsrf="always"), "sign-in"),
        Route(r"/api/sign-out", accounts.SignOutHandler, server(POST=ANYONE), "sign-out"),
        Route(r"/api/tokens", accounts.TokensHandler, server(GET=SIGNED_IN, POST=SIGNED_IN), "tokens"),
        Route(rf"/api/tokens/{TOKEN_ID}", accounts.TokenHandler, server(DELETE=SIGNED_IN), "token"),
        Route(r"/api/accounts", accounts.AccountsHandler, server(GET=MANAGE_ACCOUNTS), "accounts"),
        # Datasets and their images
        Route(r"/api/datasets", api.DatasetsHandler,
              server(GET=ANYONE, POST=CREATE_DATASETS, body_limit=METADATA_BODY), "datasets"),
        Route(rf"/api/datasets/{DATASET}", api.DatasetHandler,
              dataset(GET=READ, PATCH=CURATE, body_limit=METADATA_BODY), "dataset"),
        Route(rf"/api/datasets/{DATASET}/metadata", api.MetadataHandler, dataset(GET=READ), "dataset-metadata"),
        Route(rf"/api/datasets/{DATASET}/thumbnail", api.ThumbnailHandler, dataset(GET=READ), "dataset-thumbnail"),
        Route(rf"/api/datasets/{DATASET}/visibility", curation.VisibilityHandler,
              dataset(GET=READ, PUT=CURATE), "visibility"),
        Route(rf"/api/datasets/{DATASET}/members", curation.MembersHandler, dataset(GET=CURATE), "members"),
        Route(rf"/api/datasets/{DATASET}/members/{ACCOUNT}", curation.MemberHandler,
              dataset(PUT=CURATE, DELETE=CURATE), "member"),
        Route(rf"/api/datasets/{DATASET}/images", api.ImagesHandler, dataset(GET=READ), "images"),
        Route(IMAGE_BASE, api.ImageHandler, dataset(GET=READ), "image"),
        Route(rf"{IMAGE_BASE}/segments", segments.SegmentsHandler, dataset(GET=READ), "segments"),
        Route(rf"/api/datasets/{DATASET}/sessions", api.DatasetSessionsHandler, dataset(POST=READ),
              "dataset-sessions"),
        # Annotation layers and their annotations (append-only history; creators or curators change them).
        Route(rf"/api/datasets/{DATASET}/annotation-layers", annotations.AnnotationLayersHandler,
              dataset(GET=READ, POST=ANNOTATE, body_limit=LAYER_BODY), "annotation-layers"),
        Route(LAYER_BASE, annotations.AnnotationLayerHandler,
              dataset(GET=READ, PATCH=ANNOTATE, DELETE=CURATE, body_limit=LAYER_BODY), "annotation-layer"),
        Route(rf"{LAYER_BASE}/annotations", annotations.AnnotationsHandler,
              dataset(GET=READ, POST=ANNOTATE, body_limit=ANNOTATIONS_BODY), "annotations"),
        Route(rf"{LAYER_BASE}/export", annotations.AnnotationExportHandler, dataset(GET=READ), "annotation-export"),
        Route(rf"{LAYER_BASE}/import", annotations.AnnotationImportHandler,
              dataset(POST=ANNOTATE, body_limit=IMPORT_BODY), "annotation-import"),
        Route(ANNOTATION_BASE, annotations.AnnotationHandler,
              dataset(GET=READ, PUT=ANNOTATE, DELETE=ANNOTATE, body_limit=ANNOTATION_BODY), "annotation"),
        Route(rf"{ANNOTATION_BASE}/history", annotations.AnnotationHistoryHandler, dataset(GET=READ),
              "annotation-history"),
        Route(rf"{ANNOTATION_SOURCE}/info", annotations.AnnotationSourceInfoHandler, dataset(GET=READ),
              "annotation-source-info"),
        Route(rf"{ANNOTATION_SOURCE}/spatial(?P<level>0|[1-9][0-9]?)/(?P<cell>[0-9_]{{1,40}})",
              annotations.AnnotationSourceCellHandler, dataset(GET=READ), "annotation-source-cell"),
        Route(rf"{ANNOTATION_SOURCE}/by_id/(?P<annotation_id>{ID})", annotations.AnnotationSourceByIdHandler,
              dataset(GET=READ), "annotation-source-by-id"),
        Route(rf"{ANNOTATION_SOURCE}/rel_(?P<relationship>{NAME})/(?P<segment>0|[1-9][0-9]{{0,19}})",
              annotations.AnnotationSourceRelatedHandler, dataset(GET=READ), "annotation-source-related"),
        # Citizen Science: curators run projects; volunteers (accounts, or anonymous browsers with a cookie
        # identity, so their writes always need the XSRF header) take tasks and submit.
        Route(rf"/api/datasets/{DATASET}/projects", crowd.ProjectsHandler,
              dataset(GET=READ, POST=CURATE, body_limit=PROJECT_BODY), "projects"),
        Route(PROJECT_BASE, crowd.ProjectHandler, dataset(GET=READ, PATCH=CURATE, body_limit=PROJECT_BODY), "project"),
        Route(rf"{PROJECT_BASE}/tasks", crowd.TasksHandler, dataset(GET=CURATE, POST=CURATE), "project-tasks"),
        Route(rf"{PROJECT_BASE}/tasks/{TASK_ID}", crowd.TaskHandler, dataset(PATCH=CURATE), "project-task"),
        Route(rf"{PROJECT_BASE}/gold", crowd.GoldTasksHandler, dataset(POST=CURATE, body_limit=GOLD_BODY),
              "project-gold"),
        Route(rf"{PROJECT_BASE}/me", crowd.VolunteerHandler, dataset(GET=READ, POST=READ, xsrf="always"),
              "project-volunteer"),
        Route(rf"{PROJECT_BASE}/next", crowd.NextTaskHandler, dataset(POST=READ, xsrf="always"), "project-next"),
        Route(rf"{PROJECT_BASE}/tasks/{TASK_ID}/submission", crowd.SubmissionHandler,
              dataset(POST=READ, xsrf="always", body_limit=SUBMISSION_BODY), "project-submission"),
        Route(rf"{PROJECT_BASE}/stats", crowd.StatsHandler, dataset(GET=CURATE), "project-stats"),
        Route(rf"{PROJECT_BASE}/consensus", crowd.ConsensusHandler, dataset(POST=CURATE), "project-consensus"),
        Route(rf"{PROJECT_BASE}/export", crowd.CrowdExportHandler, dataset(GET=CURATE), "project-export"),
        Route(rf"{PROJECT_BASE}/tutorial/(?P<step>[0-9]{{1,2}})", crowd.TutorialPictureHandler, dataset(GET=READ),
              "project-tutorial-picture"),
        # Correlative registration: transforms into the dataset's reference space.
        Route(rf"{IMAGE_BASE}/transform", correlation.TransformHandler,
              dataset(GET=READ, PUT=CURATE, body_limit=TRANSFORM_BODY), "transform"),
        Route(rf"{IMAGE_BASE}/landmarks", correlation.LandmarksHandler,
              dataset(fit, POST=READ, body_limit=LANDMARKS_BODY), "landmarks"),
        Route(rf"/api/datasets/{DATASET}/scene", correlation.SceneHandler, dataset(GET=READ), "scene"),
        # Viewer sessions: the token is the credential; the session acts with its owner's rights.
        Route(rf"/api/sessions/{TOKEN}", api.SessionHandler, session(GET=READ, PUT=READ, body_limit=STATE_BODY),
              "session"),
        Route(rf"/api/sessions/{TOKEN}/display", correlation.SessionDisplayHandler, session(POST=READ),
              "session-display"),
        Route(rf"/api/sessions/{TOKEN}/landmark-layers", correlation.SessionLandmarkLayersHandler,
              session(POST=READ), "session-landmark-layers"),
        Route(rf"/api/sessions/{TOKEN}/register", correlation.SessionRegisterHandler, session(fit, POST=READ),
              "session-register"),
        # The session's database annotation layers (its edit layers save what is drawn), and shared views.
        Route(rf"/api/sessions/{TOKEN}/annotations", session_annotations.SessionAnnotationsHandler,
              session(GET=READ, POST=READ), "session-annotations"),
        Route(rf"/api/sessions/{TOKEN}/share", session_annotations.SessionShareHandler, session(POST=READ),
              "session-share"),
        Route(rf"/v/{SHARE_CODE}", session_annotations.SharedViewHandler, shared(GET=READ), "shared-view"),
        # Neuroglancer's Python-integration client and its state-sync protocol. Its POSTs carry no XSRF
        # header (the client is Neuroglancer's own): the unguessable session token is their credential.
        Route(rf"/v/{TOKEN}/(?P<name>[^/]{{0,255}})", pages.NeuroglancerClientHandler, session(GET=READ),
              "neuroglancer-client"),
        Route(rf"/events/{TOKEN}", state_sync.EventsHandler, session(GET=READ), "events"),
        Route(rf"/state/{TOKEN}", state_sync.SetStateHandler, session(POST=READ, xsrf="exempt", body_limit=STATE_BODY),
              "state"),
        Route(rf"/action/{TOKEN}", state_sync.ActionHandler, session(POST=READ, xsrf="exempt"), "action"),
        Route(rf"/credentials/{TOKEN}", state_sync.CredentialsHandler, session(POST=READ, xsrf="exempt"),
              "credentials"),
    ]


@functools.cache
def openapi_document() -> dict[str, Any]:
    from viewer.openapi import document

    return document(routes())


NOT_FOUND_RULE = server(GET=ANYONE, POST=ANYONE, PUT=ANYONE, PATCH=ANYONE, DELETE=ANYONE)


def make_app(services: Services, **tornado_settings: Any) -> Application:
    table = [url(r.pattern, r.handler, {**r.kwargs, "services": services, "rule": r.rule}, name=r.name)
             for r in routes()]
    return Application(
        table,
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "rule": NOT_FOUND_RULE},
        compress_response=False,
        xsrf_cookie_kwargs={"samesite": "Lax"},
        **tornado_settings,
    )
