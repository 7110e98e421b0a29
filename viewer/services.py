"""What handlers are given: settings, the database services and the opened-image registry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine

from annotations.access import Access
from annotations.accounts import Accounts
from annotations.annotation_source import AnnotationSource
from annotations.annotation_store import AnnotationStore
from annotations.catalog import Catalog, DatasetRecord, ImageRecord
from annotations.crowd import Crowd, RateLimits
from annotations.db import WalCheckpointer, make_engine, make_sessions
from annotations.shared_views import SharedViews
from annotations.transforms import TransformRecord, Transforms
from annotations.viewer_annotations import ViewerAnnotations
from annotations.viewer_sessions import ViewerSessions
from tiling.derived import derived_dir
from tiling.errors import InvalidTransform, MeshesNotFound
from tiling.meshes import MESH_DIR, MeshFolder, open_meshes
from tiling.omezarr import make_context, open_volume
from tiling.precomputed import ChunkCache, PrecomputedImage
from tiling.segment_store import SegmentTables
from tiling.transforms import ThinPlateSpline
from tiling.warp import WarpedVolume
from viewer.config import Settings
from viewer.correlation import Correlation
from viewer.identity import Identity
from viewer.session_watch import SessionWatch

T = TypeVar("T")
log = logging.getLogger("lamella")


class ImageRegistry:
    """Opened images of this process, by image id: a cache, never the source of truth.

    A store that fails to open is reported to the request that asked and retried on the
    next request, so one broken image never stops the others being served.
    """

    RECORD_TTL_SECONDS = 10.0  # how long a process trusts its copy of a catalog entry
    MESH_TTL_SECONDS = 10.0  # how long a process may take to see meshes built where there were none

    def __init__(
        self,
        settings: Settings,
        lookup: Callable[[str, str], Awaitable[ImageRecord]],
        lookup_dataset: Callable[[str], Awaitable[DatasetRecord]],
        lookup_transform: Callable[[int], Awaitable[TransformRecord]],
    ) -> None:
        self._lookup = lookup
        self._lookup_dataset = lookup_dataset
        self._lookup_transform = lookup_transform
        self._transforms: dict[int, TransformRecord] = {}
        self._image_names: dict[tuple[str, int], str] = {}
        self._records: dict[tuple[str, str], tuple[float, ImageRecord]] = {}
        self.context = make_context(settings.tensorstore_cache_mb << 20)
        self.chunk_cache = ChunkCache(settings.chunk_cache_mb << 20)
        self.jpeg_quality = settings.jpeg_quality
        self._opened: dict[Any, PrecomputedImage] = {}
        self._opening: dict[Any, asyncio.Future[PrecomputedImage]] = {}
        self.images_dir = settings.images_dir
        self._meshes: dict[int, tuple[float, MeshFolder | None]] = {}

    async def resolve(self, dataset_ref: str, image_name: str) -> tuple[ImageRecord, PrecomputedImage]:
        """The catalog entry and opened image behind a data URL; the hot path of every chunk request.

        Entries are cached for a few seconds so that a chunk costs no database round trip;
        registered images are immutable, so a stale entry can only lag a new registration.
        """
        key = (dataset_ref, image_name)
        cached = self._records.get(key)
        now = time.monotonic()
        if cached is None or cached[0] < now:
            record = await self._lookup(dataset_ref, image_name)
            self._records[key] = (now + self.RECORD_TTL_SECONDS, record)
        else:
            record = cached[1]
        return record, await self.get(record)

    async def meshes(self, record: ImageRecord) -> MeshFolder | None:
        """The current mesh build of a label image (None for images and labels without meshes)."""
        if record.kind != "segmentation":
            return None
        now = time.monotonic()
        cached = self._meshes.get(record.id)
        # A build found is checked on disk (a stat) every time, so a replaced one is never served under its old
        # name; a new build where there was none is seen within MESH_TTL_SECONDS.
        if cached is not None and cached[0] > now and (cached[1] is None or cached[1].current()):
            return cached[1]
        folder = derived_dir(record.uri, record.managed, self.images_dir, record.id) / MESH_DIR
        found = await asyncio.to_thread(open_meshes, folder)
        self._meshes[record.id] = (now + self.MESH_TTL_SECONDS, found)
        return found

    async def mesh_build(self, record: ImageRecord, build: str) -> MeshFolder:
        """The mesh build named in a URL, if it is still the current one."""
        found = await self.meshes(record)
        if found is None:
            raise MeshesNotFound(f"image {record.name!r} has no meshes")
        found.check(build)
        return found

    async def resolve_id(self, dataset_ref: str, image_id: int) -> tuple[ImageRecord, PrecomputedImage]:
        """Like ``resolve``, for an image named by id (a transform's reference image)."""
        name = self._image_names.get((dataset_ref, image_id))
        if name is None:
            dataset = await self._lookup_dataset(dataset_ref)
            image = next((image for image in dataset.images if image.id == image_id), None)
            if image is None:
                raise InvalidTransform(f"image {image_id} is not in dataset {dataset_ref!r}")
            name = self._image_names[(dataset_ref, image_id)] = image.name
        return await self.resolve(dataset_ref, name)

    async def transform(self, transform_id: int) -> TransformRecord:
        """A stored transform; rows are never changed, so a process keeps them."""
        record = self._transforms.get(transform_id)
        if record is None:
            record = self._transforms[transform_id] = await self._lookup_transform(transform_id)
        return record

    async def get(self, image: ImageRecord) -> PrecomputedImage:
        return await self._once(image.id, lambda: self._open(image))

    async def warped(
        self, image: ImageRecord, moving: PrecomputedImage, reference: PrecomputedImage, transform: TransformRecord
    ) -> PrecomputedImage:
        """``moving`` resampled on ``reference``'s grid through a thin-plate spline (immutable per transform)."""
        key = ("warped", transform.id, image.id)
        return await self._once(key, lambda: self._open_warped(key, image, moving, reference, transform))

    async def _once(self, key: Any, opener: Callable[[], Awaitable[PrecomputedImage]]) -> PrecomputedImage:
        opened = self._opened.get(key)
        if opened is not None:
            return opened
        pending = self._opening.get(key)
        if pending is None:
            pending = asyncio.ensure_future(opener())
            self._opening[key] = pending
            pending.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(pending)

    async def _open(self, image: ImageRecord) -> PrecomputedImage:
        volume = await open_volume(image.uri, self.context)
        opened = PrecomputedImage(
            volume,
            cache_key=image.id,
            cache=self.chunk_cache,
            layer_type="segmentation" if image.kind == "segmentation" else "image",
            jpeg_quality=self.jpeg_quality,
        )
        self._opened[image.id] = opened
        return opened

    async def _open_warped(
        self,
        key: Any,
        image: ImageRecord,
        moving: PrecomputedImage,
        reference: PrecomputedImage,
        transform: TransformRecord,
    ) -> PrecomputedImage:
        assert transform.landmarks is not None
        spline = await asyncio.to_thread(
            ThinPlateSpline, transform.landmarks["moving"], transform.landmarks["reference"], transform.dimensions
        )
        labels = image.kind == "segmentation"
        opened = PrecomputedImage(
            WarpedVolume(moving.volume, reference.volume.geometry, spline, labels=labels),  # type: ignore[arg-type]
            cache_key=key,
            cache=self.chunk_cache,
            layer_type="segmentation" if labels else "image",
            jpeg_quality=self.jpeg_quality,
        )
        self._opened[key] = opened
        return opened


@dataclass
class Services:
    settings: Settings
    engine: Engine
    catalog: Catalog
    viewer_sessions: ViewerSessions
    transforms: Transforms
    accounts: Accounts
    access: Access
    annotations: AnnotationStore
    annotation_source: AnnotationSource
    crowd: Crowd
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "lamella-db"))
    segments: SegmentTables = field(default_factory=SegmentTables)  # label images' segment tables, loaded
    images: ImageRegistry = field(init=False)
    session_watch: SessionWatch = field(init=False)
    correlation: Correlation = field(init=False)
    identity: Identity = field(init=False)
    shared_views: SharedViews = field(init=False)
    checkpointer: WalCheckpointer | None = None  # SQLite: the WAL's checkpoints, off the requests' commits
    viewer_annotations: ViewerAnnotations = field(init=False)

    def __post_init__(self) -> None:
        self.correlation = Correlation(self.catalog, self.transforms)
        self.shared_views = SharedViews(self.viewer_sessions.sessions)
        self.viewer_annotations = ViewerAnnotations(self.viewer_sessions, self.annotations, self.shared_views)
        self.identity = Identity(self.accounts, self.access, self.viewer_sessions, self.call,
                                 shared_views=self.shared_views)
        self.images = ImageRegistry(
            self.settings,
            lambda ref, name: self.call(self.catalog.get_image, ref, name),
            lambda ref: self.call(self.catalog.get_dataset, ref),
            lambda transform_id: self.call(self.transforms.get, transform_id),
        )
        self.session_watch = SessionWatch(
            lambda token: self.call(self.viewer_sessions.generations, token), self.settings.state_poll_seconds
        )

    @classmethod
    def create(cls, settings: Settings) -> Services:
        engine = make_engine(settings.resolved_database_url, checkpoint_in_background=True)
        sessions = make_sessions(engine)
        annotations = AnnotationStore(sessions, settings.annotation_cell_limit)
        return cls(
            settings=settings,
            engine=engine,
            catalog=Catalog(sessions),
            viewer_sessions=ViewerSessions(sessions),
            transforms=Transforms(sessions),
            accounts=Accounts(sessions),
            access=Access(sessions),
            annotations=annotations,
            annotation_source=AnnotationSource(sessions),
            crowd=Crowd(sessions, annotations, RateLimits(settings.volunteer_submissions_per_minute,
                                                          settings.address_submissions_per_minute)),
            checkpointer=WalCheckpointer(engine).start() if engine.dialect.name == "sqlite" else None,
        )

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking database call off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        self.executor.shutdown(wait=False)
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()
