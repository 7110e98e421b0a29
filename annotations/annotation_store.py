"""Annotation layers and their annotations: create, read, change, delete, list, with append-only history.

Rows of ``annotation_versions`` are only added: an edit closes the current version (``valid_to``) and adds
one, a delete closes it and adds a tombstone. A layer can so be read as of any past time. Each write is one
transaction that first takes the layer's write lock (``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL the row
lock of bumping the layer's generation), so that concurrent writers of one layer take turns and an
acknowledged write is committed. The spatial index of the current annotations (``annotations.spatial_rows``)
changes in the same transaction as the versions. Every method takes the actor first and decides through
``annotations.access`` only; records out, never ORM rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError, model_validator
from sqlalchemy import BigInteger, Select, and_, func, insert, or_, select, true, update
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from annotations import spatial_rows
from annotations.access import Action, Actor, DatasetAccess, require, require_maker_or_curator
from annotations.annotation_encoding import Entry, Layout
from annotations.catalog import UtcDatetime, as_utc
from annotations.cells import DEFAULT_LIMIT, LevelPlan
from annotations.db import writing
from annotations.errors import (
    AnnotationNotFound,
    BatchTooLarge,
    InvalidAnnotation,
    InvalidLayer,
    LayerNotFound,
    NameTaken,
)
from annotations.gradual import release
from annotations.layer_specs import (
    GEOMETRY_FIELDS,
    RANK,
    AnnotationIn,
    CheckedAnnotation,
    LayerSpec,
    as_float32,
    check_annotation,
    check_annotations,
)
from annotations.models import (
    Annotation,
    AnnotationLayer,
    AnnotationSegment,
    AnnotationVersion,
    Dataset,
    Image,
    utcnow,
)
from annotations.names import check_name
from annotations.new_annotations import NewAnnotations, segment_rows
from annotations.spatial_index import Batch
from annotations.views import View

MAX_BATCH = 100_000  # annotations in one bulk create
MAX_PAGE = 10_000
_NUMBER = r"-?[0-9]{1,20}(\.[0-9]{1,20})?"  # plain decimals: finite by construction
BBOX_PATTERN = rf"^{_NUMBER}(,{_NUMBER}){{5}}$"
LAYER_NAME = r"^[a-z][a-z0-9_\-]{0,63}$"  # as dataset names (annotations.names)
DEFAULT_PAGE = 1000


class LayerIn(LayerSpec):
    """A new layer: its name, description, declaration and, optionally, bounds (default: the extent of the
    dataset's reference image, in nm)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "name": "synapses", "types": ["point"], "labels": [{"id": "synapse"}, {"id": "vesicle"}],
        "properties": [{"id": "confidence", "type": "float32"}],
    }]})

    name: StrictStr = Field(pattern=LAYER_NAME)
    description: StrictStr = Field("", max_length=20_000)
    lower_bound: list[float] | None = Field(None, min_length=RANK, max_length=RANK)
    upper_bound: list[float] | None = Field(None, min_length=RANK, max_length=RANK)


class LayerChanges(BaseModel):
    """A curator's change to a layer: a new name or description, and additions to its declaration (types,
    labels, properties and relationships already there stay as they are, so no annotation is stranded)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"description": "synapses, checked", "labels": [{"id": "synapse"}, {"id": "vesicle"}, {"id": "mito"}]}]})

    name: StrictStr | None = Field(None, pattern=LAYER_NAME)
    description: StrictStr | None = Field(None, max_length=20_000)
    types: list[Any] | None = None
    labels: list[Any] | None = None
    properties: list[Any] | None = None
    relationships: list[Any] | None = None


class LayerRecord(BaseModel):
    id: int
    dataset_id: int
    name: str
    description: str
    spec: LayerSpec
    lower_bound: list[float]
    upper_bound: list[float]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AnnotationRecord(BaseModel):
    """One annotation as it is (or was, for an ``as_of`` read); geometry fields by type as in ``AnnotationIn``."""

    id: int
    layer_id: int
    type: str
    point: list[float] | None = None
    point_a: list[float] | None = None
    point_b: list[float] | None = None
    center: list[float] | None = None
    radii: list[float] | None = None
    points: list[list[float]] | None = None
    label: str | None
    description: str
    properties: dict[str, Any]
    segments: dict[str, list[int]]
    author: str  # who wrote this version
    created_at: UtcDatetime
    updated_at: UtcDatetime  # when this version was written
    version: int


class VersionRecord(AnnotationRecord):
    deleted: bool
    superseded_at: UtcDatetime | None


class AnnotationPage(BaseModel):
    annotations: list[AnnotationRecord]
    next_after: int | None  # pass as ``after`` for the next page; None: this was the last


class CreatedRecord(BaseModel):
    layer_id: int
    count: int
    ids: list[int]


class DeletedRecord(BaseModel):
    id: int
    deleted: bool = True
    deleted_at: UtcDatetime


_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})", re.ASCII)


def _iso_time(value: Any) -> Any:
    """ISO 8601 date-time text with its time zone (pydantic alone would also take a bare Unix time)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("give the time zone")
        return value
    if not isinstance(value, str) or _ISO_TIME.fullmatch(value) is None:
        raise ValueError("expected an ISO 8601 time with its zone, e.g. 2025-01-01T00:00:00Z")
    return value


Moment = Annotated[datetime, BeforeValidator(_iso_time)]


class AnnotationQuery(BaseModel):
    """What a list selects: author (account name), label, update time [since, until), the layer as of a
    time, a bounding box ``x0,y0,z0,x1,y1,z1`` in nm (annotations whose bounding box meets it), and a page."""

    model_config = ConfigDict(extra="forbid")

    author: str | None = Field(None, max_length=64)
    label: str | None = Field(None, max_length=64)
    since: Moment | None = None
    until: Moment | None = None
    as_of: Moment | None = None
    bbox: str | None = Field(None, pattern=BBOX_PATTERN, description="two corners x0,y0,z0,x1,y1,z1 in nm")
    after: int = Field(0, ge=0, le=2**62)
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)

    @model_validator(mode="after")
    def _box(self) -> AnnotationQuery:
        self.box()
        return self

    def box(self) -> tuple[list[float], list[float]] | None:
        """The box's lower and upper corners (the two corners may be given in any order)."""
        if self.bbox is None:
            return None
        values = [float(v) for v in self.bbox.split(",")]
        if len(values) != 2 * RANK:  # the pattern says so; a model built in code is checked here
            raise ValueError("bbox is six numbers x0,y0,z0,x1,y1,z1")
        pairs = list(zip(values[:RANK], values[RANK:], strict=True))
        return [min(p) for p in pairs], [max(p) for p in pairs]

    @property
    def view(self) -> View:
        return View(as_of=self.as_of, author=self.author, label=self.label, since=self.since, until=self.until)


def layer_record(row: AnnotationLayer) -> LayerRecord:
    return LayerRecord(id=row.id, dataset_id=row.dataset_id, name=row.name, description=row.description,
                       spec=LayerSpec.model_validate(row.spec), lower_bound=row.lower_bound,
                       upper_bound=row.upper_bound, created_at=row.created_at, updated_at=row.updated_at)


def geometry_fields(kind: str, geometry: Sequence[float]) -> dict[str, Any]:
    """The record's geometry fields of a flat stored geometry."""
    values = list(geometry)
    if kind == "polyline":
        return {"points": [values[i:i + RANK] for i in range(0, len(values), RANK)]}
    names = GEOMETRY_FIELDS[kind]
    return {name: values[i * RANK:(i + 1) * RANK] for i, name in enumerate(names)}


def _record(version: AnnotationVersion, created_at: datetime, cls: type[AnnotationRecord] = AnnotationRecord,
            **extra: Any) -> Any:
    return cls(id=version.annotation_id, layer_id=version.layer_id, type=version.kind,
               **geometry_fields(version.kind, version.geometry), label=version.label,
               description=version.description, properties=version.properties,
               segments={k: list(v) for k, v in version.segments.items()}, author=version.author,
               created_at=created_at, updated_at=version.valid_from, version=version.id, **extra)


def view_clause(view: View) -> Any:
    """SQL: the live versions a view selects (current ones, or those valid at ``as_of``)."""
    V = AnnotationVersion
    if view.as_of is None:
        clauses = [V.valid_to.is_(None)]
    else:
        clauses = [V.valid_from <= view.as_of, or_(V.valid_to.is_(None), V.valid_to > view.as_of)]
    clauses.append(V.deleted.is_(False))
    if view.author is not None:
        clauses.append(V.author == view.author)
    if view.label is not None:
        clauses.append(V.label == view.label)
    if view.since is not None:
        clauses.append(V.valid_from >= view.since)
    if view.until is not None:
        clauses.append(V.valid_from < view.until)
    return and_(*clauses)


def _box_ranges(layer: LayerRecord, margin: float, lower: list[float], upper: list[float]) -> list[tuple[int, int]]:
    """The code ranges of the cells around a box, widened by the layer's largest annotation (anchors are
    bounding-box centres)."""
    plan = LevelPlan.for_bounds(tuple(layer.lower_bound), tuple(layer.upper_bound))
    return plan.ranges_covering([v - margin for v in lower], [v + margin for v in upper])


def _meets(lower: list[float], upper: list[float]) -> list[Any]:
    """SQL: the version's bounding box meets the box."""
    V = AnnotationVersion
    return [V.x1 >= lower[0], V.x0 <= upper[0], V.y1 >= lower[1], V.y0 <= upper[1], V.z1 >= lower[2],
            V.z0 <= upper[2]]


def _plan(row: AnnotationLayer) -> LevelPlan:
    """The layer's spatial index levels, by its bounds and cell limit."""
    return LevelPlan.for_bounds(tuple(float(v) for v in row.lower_bound), tuple(float(v) for v in row.upper_bound),
                                row.cell_limit)


def _lower(version: AnnotationVersion) -> tuple[float, float, float]:
    return version.x0, version.y0, version.z0


def _upper(version: AnnotationVersion) -> tuple[float, float, float]:
    return version.x1, version.y1, version.z1


def load_layer(session: Session, access: DatasetAccess, layer_id: int, lock: bool = False) -> AnnotationLayer:
    """The layer of this dataset; with ``lock``, bump its generation first (PostgreSQL's row lock: writers of
    one layer take turns). Raises LayerNotFound."""
    if not 0 < layer_id < 2**31:
        raise LayerNotFound(f"no annotation layer {layer_id} in dataset {access.name!r}")
    if lock:
        session.execute(update(AnnotationLayer)
                        .where(AnnotationLayer.id == layer_id, AnnotationLayer.dataset_id == access.id)
                        .values(generation=AnnotationLayer.generation + 1))
    row = session.get(AnnotationLayer, layer_id, populate_existing=lock)
    if row is None or row.dataset_id != access.id:
        raise LayerNotFound(f"no annotation layer {layer_id} in dataset {access.name!r}")
    return row


class AnnotationStore:
    """The annotation service (blocking; the web layer runs it in its database threads)."""

    def __init__(self, sessions: sessionmaker[Session], cell_limit: int = DEFAULT_LIMIT) -> None:
        self.sessions = sessions
        self.cell_limit = cell_limit  # of the spatial index of layers made from now on

    # Layers

    def create_layer(self, actor: Actor, access: DatasetAccess, layer: LayerIn) -> LayerRecord:
        """A new layer in the dataset (anyone who annotates it; its maker and curators change it)."""
        require(actor, Action.ANNOTATE, access)
        check_name(layer.name, "layer")
        now = utcnow()
        try:
            with self.sessions.begin() as session:
                lower, upper = self._bounds(session, access.id, layer)
                self._check_relationships(session, access.id, layer.relationships)
                spec = LayerSpec.model_validate(layer.model_dump(include=set(LayerSpec.model_fields)))
                row = AnnotationLayer(dataset_id=access.id, name=layer.name, description=layer.description,
                                      spec=spec.model_dump(), lower_bound=lower, upper_bound=upper, generation=0,
                                      max_extent=0.0, cell_limit=self.cell_limit, created_by=actor.account_id,
                                      created_at=now, updated_at=now)
                session.add(row)
                session.flush()
                spatial_rows.forget(session.connection(), row.id)  # of a deleted layer whose id SQLite reuses
                return layer_record(row)
        except IntegrityError:
            raise NameTaken(f"the dataset already has a layer named {layer.name!r}") from None

    def layers(self, actor: Actor, access: DatasetAccess) -> list[LayerRecord]:
        require(actor, Action.READ, access)
        with self.sessions() as session:
            rows = session.scalars(select(AnnotationLayer).where(AnnotationLayer.dataset_id == access.id)
                                   .order_by(AnnotationLayer.id))
            return [layer_record(row) for row in rows]

    def layer(self, actor: Actor, access: DatasetAccess, layer_id: int) -> LayerRecord:
        require(actor, Action.READ, access)
        with self.sessions() as session:
            return layer_record(load_layer(session, access, layer_id))

    def update_layer(self, actor: Actor, access: DatasetAccess, layer_id: int, changes: LayerChanges) -> LayerRecord:
        """Rename, describe, or extend a layer's declaration (its maker, curators)."""
        require(actor, Action.ANNOTATE, access)
        try:
            with self._writing() as session:
                row = load_layer(session, access, layer_id, lock=True)
                require_maker_or_curator(actor, access, row.created_by)
                old = LayerSpec.model_validate(row.spec)
                given = changes.model_dump(include={"types", "labels", "properties", "relationships"},
                                           exclude_none=True)
                merged = {**old.model_dump(), **given}
                try:
                    new = LayerSpec.model_validate(merged)
                except ValidationError as error:
                    first = error.errors()[0]
                    where = ".".join(str(part) for part in first["loc"])
                    message = str(first["msg"]).removeprefix("Value error, ")
                    raise InvalidLayer(f"{where}: {message}" if where else message) from None
                for part in ("types", "labels", "properties", "relationships"):
                    before, after = getattr(old, part), getattr(new, part)
                    if after[:len(before)] != before:
                        raise InvalidLayer(f"{part} may only be added to (the existing ones stay, in their order)")
                self._check_relationships(session, access.id, new.relationships)
                if changes.name is not None:
                    check_name(changes.name, "layer")
                    row.name = changes.name
                if changes.description is not None:
                    row.description = changes.description
                row.spec = new.model_dump()
                row.updated_at = utcnow()
                session.flush()
                for kind in old.types:  # records laid out anew where properties or labels change their layout
                    layout = Layout.of(new, kind)
                    if layout.properties != Layout.of(old, kind).properties:
                        spatial_rows.reencode(session.connection(), layer_id, kind, layout)
                return layer_record(row)
        except IntegrityError:
            raise NameTaken(f"the dataset already has a layer named {changes.name!r}") from None

    def delete_layer(self, actor: Actor, access: DatasetAccess, layer_id: int) -> bool:
        """Remove a layer with its annotations and their history (curators)."""
        require(actor, Action.CURATE, access)
        with self._writing() as session:
            row = load_layer(session, access, layer_id, lock=True)
            spatial_rows.forget(session.connection(), layer_id)
            session.delete(row)
        return True

    # Annotations

    def create_many(self, actor: Actor, access: DatasetAccess, layer_id: int, items: Sequence[AnnotationIn],
                    max_batch: int | None = MAX_BATCH) -> CreatedRecord:
        """Add ``items`` to the layer, all or none (annotators of the dataset). Checked before anything is written.
        ``max_batch``: how many one call may add (None: no bound; an import sets its own)."""
        require(actor, Action.ANNOTATE, access)
        if max_batch is not None and len(items) > max_batch:
            raise BatchTooLarge(f"at most {max_batch} annotations in one request, not {len(items)}")
        with self.sessions() as session:
            row = load_layer(session, access, layer_id)
            layer, plan = layer_record(row), _plan(row)
        checked = self._check_many(layer, items)
        new = NewAnnotations.prepare(layer.spec.model_dump(), plan, checked)
        with self._writing() as session:
            row = load_layer(session, access, layer_id, lock=True)
            if row.spec != new.spec:  # the layer's declaration grew meanwhile: records are laid out anew
                new = NewAnnotations.prepare(row.spec, plan, checked, new.keys)
            ids: list[int] = []
            if checked:
                row.max_extent = max(row.max_extent, *new.extents)
                ids = new.write(session.connection(), layer_id, LayerSpec.model_validate(row.spec).relationships,
                                actor.account_id, actor.name or "", utcnow())
        new.release()
        release(checked)
        return CreatedRecord(layer_id=layer_id, count=len(ids), ids=ids)

    def get(self, actor: Actor, access: DatasetAccess, layer_id: int, annotation_id: int,
            as_of: datetime | None = None) -> AnnotationRecord:
        require(actor, Action.READ, access)
        with self.sessions() as session:
            load_layer(session, access, layer_id)
            found = session.execute(
                select(AnnotationVersion, Annotation.created_at)
                .join(Annotation, Annotation.id == AnnotationVersion.annotation_id)
                .where(AnnotationVersion.annotation_id == annotation_id, AnnotationVersion.layer_id == layer_id,
                       view_clause(View(as_of=as_of)))
            ).first()
            if found is None:
                raise AnnotationNotFound(f"no annotation {annotation_id} in layer {layer_id}")
            return _record(found[0], found[1])

    def update(self, actor: Actor, access: DatasetAccess, layer_id: int, annotation_id: int,
               item: AnnotationIn) -> AnnotationRecord:
        """Replace an annotation's content with a new version (its creator, or a curator); a change that changes
        nothing (the same geometry, label, description, properties and segments) makes no version."""
        require(actor, Action.ANNOTATE, access)
        with self.sessions() as session:
            layer = layer_record(load_layer(session, access, layer_id))
        checked = self._check(layer, item)
        with self._writing() as session:
            layer_row = load_layer(session, access, layer_id, lock=True)
            current, created_at = self._current_for_change(session, actor, access, layer_id, annotation_id)
            if (current.kind, list(current.geometry), current.label, current.description, current.properties or {},
                    current.segments or {}) == (checked.kind, list(checked.geometry), checked.label,
                                                checked.description, checked.properties, checked.segments):
                return _record(current, created_at)
            layer_row.max_extent = max(layer_row.max_extent, checked.extent)
            now = utcnow()
            current.valid_to = now
            plan, spec = _plan(layer_row), LayerSpec.model_validate(layer_row.spec)
            row = self._version_row(plan, layer_id, annotation_id, checked, actor, actor.name or "", now,
                                    current.sample_key)
            version = AnnotationVersion(**row)
            session.add(version)
            session.flush()
            self._insert_segments(session, layer_row.id, spec.relationships, [version.id], [checked])
            self._index_change(session.connection(), plan, spec, current, checked)
            return _record(version, created_at)

    def delete(self, actor: Actor, access: DatasetAccess, layer_id: int, annotation_id: int) -> DeletedRecord:
        """Mark an annotation deleted (its creator, or a curator); its history stays."""
        require(actor, Action.ANNOTATE, access)
        with self._writing() as session:
            layer_row = load_layer(session, access, layer_id, lock=True)
            current, _ = self._current_for_change(session, actor, access, layer_id, annotation_id)
            now = utcnow()
            current.valid_to = now
            columns = {c.key: getattr(current, c.key) for c in AnnotationVersion.__table__.columns if c.key != "id"}
            columns.update(deleted=True, valid_from=now, valid_to=None, author=actor.name or "",
                           author_id=actor.account_id)
            session.add(AnnotationVersion(**columns))
            spatial_rows.remove(session.connection(), layer_id, current.kind, _plan(layer_row),
                                Layout.of(LayerSpec.model_validate(layer_row.spec), current.kind), current.sample_key,
                                annotation_id, _lower(current), _upper(current))
        return DeletedRecord(id=annotation_id, deleted_at=now)

    def history(self, actor: Actor, access: DatasetAccess, layer_id: int, annotation_id: int) -> list[VersionRecord]:
        """Every version of an annotation, oldest first, with its author and time; a delete is a version too."""
        require(actor, Action.READ, access)
        with self.sessions() as session:
            load_layer(session, access, layer_id)
            rows = session.execute(
                select(AnnotationVersion, Annotation.created_at)
                .join(Annotation, Annotation.id == AnnotationVersion.annotation_id)
                .where(AnnotationVersion.annotation_id == annotation_id, AnnotationVersion.layer_id == layer_id)
                .order_by(AnnotationVersion.valid_from, AnnotationVersion.id)
            ).all()
            if not rows:
                raise AnnotationNotFound(f"no annotation {annotation_id} in layer {layer_id}")
            return [_record(v, created, VersionRecord, deleted=v.deleted, superseded_at=v.valid_to)
                    for v, created in rows]

    def query(self, actor: Actor, access: DatasetAccess, layer_id: int, query: AnnotationQuery) -> AnnotationPage:
        """A page of the layer's annotations that match, by id (``after``: the last id of the previous page)."""
        require(actor, Action.READ, access)
        V = AnnotationVersion
        with self.sessions() as session:
            row = load_layer(session, access, layer_id)
            layer, margin = layer_record(row), row.max_extent
            box = query.box()
            if box is not None and session.get_bind().dialect.name == "postgresql":
                statement = self._box_query(layer, margin, query, *box)
            else:
                # With a box, the id is hidden from the planners behind "+ 0": else they walk the whole layer in
                # id order (the id index) instead of looking up the box's cells (the cell index) and sorting
                # those. With a box, the layer is named in each of its cell ranges instead (``_box_clauses``).
                by_id: Any = V.annotation_id if box is None else V.annotation_id + 0
                statement = (select(V, Annotation.created_at).join(Annotation, Annotation.id == V.annotation_id)
                             .where(view_clause(query.view), by_id > query.after))
                if box is None:
                    statement = statement.where(V.layer_id == layer_id)
                else:
                    statement = statement.where(*self._box_clauses(layer, margin, *box))
                statement = statement.order_by(by_id).limit(query.limit + 1)
            rows = session.execute(statement).all()
        records = [_record(v, created) for v, created in rows[:query.limit]]
        more = len(rows) > query.limit
        return AnnotationPage(annotations=records, next_after=records[-1].id if more else None)

    # Helpers

    def _writing(self) -> AbstractContextManager[Session]:
        """One write transaction (``annotations.db.writing``)."""
        return writing(self.sessions)

    @staticmethod
    def _bounds(session: Session, dataset_id: int, layer: LayerIn) -> tuple[list[float], list[float]]:
        if (layer.lower_bound is None) != (layer.upper_bound is None):
            raise InvalidLayer("give both lower_bound and upper_bound, or neither")
        if layer.lower_bound is not None and layer.upper_bound is not None:
            lower = [as_float32(v, "lower_bound") for v in layer.lower_bound]
            upper = [as_float32(v, "upper_bound") for v in layer.upper_bound]
        else:
            dataset = session.get(Dataset, dataset_id)
            images = list(session.scalars(select(Image).where(Image.dataset_id == dataset_id).order_by(Image.id)))
            assert dataset is not None
            reference = next((i for i in images if i.name == dataset.reference_image), None) \
                or next((i for i in images if i.modality == "EM" and i.kind == "image"), None) \
                or next(iter(images), None)
            if reference is None:
                raise InvalidLayer("the dataset has no image to take bounds from: give lower_bound and upper_bound")
            zyx = [n * v for n, v in zip(reference.shape[-3:], reference.voxel_size_nm[-3:], strict=True)]
            lower, upper = [0.0, 0.0, 0.0], [as_float32(v, "bounds") for v in zyx[::-1]]
        if any(a >= b for a, b in zip(lower, upper, strict=True)):
            raise InvalidLayer("each lower bound must be below its upper bound")
        return lower, upper

    @staticmethod
    def _check_relationships(session: Session, dataset_id: int, names: Sequence[str]) -> None:
        if not names:
            return
        labels = set(session.scalars(select(Image.name).where(Image.dataset_id == dataset_id,
                                                              Image.kind == "segmentation")))
        for name in names:
            if name not in labels:
                raise InvalidLayer(f"a relationship names a label image of the dataset; {name[:64]!r} is not one")

    def _check_many(self, layer: LayerRecord, items: Sequence[AnnotationIn]) -> list[CheckedAnnotation]:
        """``items`` checked against the layer; the error of the first item with one names its index."""
        try:
            return check_annotations(layer.spec, layer.lower_bound, layer.upper_bound, items)
        except InvalidAnnotation:
            return [self._check(layer, item, index=i if len(items) > 1 else None) for i, item in enumerate(items)]

    @staticmethod
    def _index_change(connection: Any, plan: LevelPlan, spec: LayerSpec, current: AnnotationVersion,
                      checked: CheckedAnnotation) -> None:
        """The spatial index after an edit: the record replaced where the annotation stays in its cells (same
        type and bounding box), else taken out and placed anew (with its own sample key)."""
        layout = Layout.of(spec, checked.kind)
        record = layout.encode(Entry(current.annotation_id, checked.geometry, checked.label, checked.properties, {}))
        lower, upper = _lower(current), _upper(current)
        if current.kind == checked.kind and (lower, upper) == (checked.lower, checked.upper) and \
                spatial_rows.replace_record(connection, current.layer_id, current.kind, plan, current.sample_key,
                                            current.annotation_id, lower, upper, record):
            return
        spatial_rows.remove(connection, current.layer_id, current.kind, plan, Layout.of(spec, current.kind),
                            current.sample_key, current.annotation_id, lower, upper)
        spatial_rows.place_batch(connection, current.layer_id, checked.kind, plan, layout, Batch.of(
            [current.sample_key], [current.annotation_id], [record], [checked.lower], [checked.upper]))

    @staticmethod
    def _check(layer: LayerRecord, item: AnnotationIn, index: int | None = None) -> CheckedAnnotation:
        try:
            return check_annotation(layer.spec, layer.lower_bound, layer.upper_bound, item)
        except InvalidAnnotation as error:
            if index is None:
                raise
            raise InvalidAnnotation(f"annotations[{index}]: {error}") from None

    @staticmethod
    def _version_row(plan: LevelPlan, layer_id: int, annotation_id: int, item: CheckedAnnotation, actor: Actor,
                     author: str, now: datetime, sample_key: float) -> dict[str, Any]:
        return {
            "annotation_id": annotation_id, "layer_id": layer_id, "kind": item.kind, "geometry": list(item.geometry),
            "label": item.label, "description": item.description, "properties": item.properties,
            "segments": item.segments, "author_id": actor.account_id, "author": author, "deleted": False,
            "cell": plan.code_of(item.anchor), "sample_key": sample_key,
            "x0": item.lower[0], "y0": item.lower[1], "z0": item.lower[2],
            "x1": item.upper[0], "y1": item.upper[1], "z1": item.upper[2], "extent": item.extent,
            "valid_from": now, "valid_to": None,
        }

    @staticmethod
    def _insert_segments(session: Session, layer_id: int, relationships: Sequence[str], version_ids: list[int],
                         checked: list[CheckedAnnotation]) -> None:
        segments = [{"version_id": version_id, "relationship": relationship, "segment_id": segment,
                     "layer_id": layer}
                    for version_id, relationship, segment, layer in segment_rows(layer_id, relationships, version_ids,
                                                                                 checked)]
        if segments:
            session.execute(insert(AnnotationSegment), segments)

    @staticmethod
    def _current_for_change(session: Session, actor: Actor, access: DatasetAccess, layer_id: int,
                            annotation_id: int) -> tuple[AnnotationVersion, datetime]:
        """The current version to change, if the actor may: its creator, or a curator of the dataset."""
        found = session.execute(
            select(AnnotationVersion, Annotation.created_by, Annotation.created_at)
            .join(Annotation, Annotation.id == AnnotationVersion.annotation_id)
            .where(AnnotationVersion.annotation_id == annotation_id, AnnotationVersion.layer_id == layer_id,
                   AnnotationVersion.valid_to.is_(None), AnnotationVersion.deleted.is_(False))
        ).first() if 0 < annotation_id < 2**31 else None
        if found is None:
            raise AnnotationNotFound(f"no annotation {annotation_id} in layer {layer_id}")
        version, creator, created_at = found
        require_maker_or_curator(actor, access, creator)
        return version, as_utc(created_at)

    @staticmethod
    def _box_query(layer: LayerRecord, margin: float, query: AnnotationQuery, lower: list[float],
                   upper: list[float]) -> Select[Any]:
        """PostgreSQL: a box listing as one index range scan of the cell index per range of cells around the box
        (a lateral subquery per range, kept apart by OFFSET 0), whatever the table's statistics say: left to
        plan an OR of ranges, PostgreSQL walked a whole layer of a million annotations that autovacuum had not
        analysed yet (1.8 s instead of 6 ms)."""
        V = AnnotationVersion
        ranges = _box_ranges(layer, margin, lower, upper)
        cells = func.unnest(array([low for low, _ in ranges], type_=BigInteger),
                            array([high for _, high in ranges], type_=BigInteger)
                            ).table_valued("low", "high").render_derived(name="r")
        found = (select(V).where(V.layer_id == layer.id, V.cell.between(cells.c.low, cells.c.high),
                                 view_clause(query.view), V.annotation_id > query.after, *_meets(lower, upper))
                 .offset(0).lateral("v"))
        version = aliased(AnnotationVersion, found)
        return (select(version, Annotation.created_at).select_from(cells).join(found, true())
                .join(Annotation, Annotation.id == version.annotation_id)
                .order_by(version.annotation_id).limit(query.limit + 1))

    @staticmethod
    def _box_clauses(layer: LayerRecord, margin: float, lower: list[float], upper: list[float]) -> list[Any]:
        """Annotations whose bounding box meets the box: a range look-up of the cells around the box, widened
        by the layer's largest annotation (anchors are bounding-box centres), then the exact test."""
        V = AnnotationVersion
        ranges = _box_ranges(layer, margin, lower, upper)
        # The layer in each term: SQLite then looks each range up in the cell index (a multi-index OR) instead of
        # walking all of the layer's entries and testing their cells.
        return [or_(*[and_(V.layer_id == layer.id, V.cell.between(low, high)) for low, high in ranges]),
                *_meets(lower, upper)]
