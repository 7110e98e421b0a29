"""SQLAlchemy models. Change them only together with a migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    """A deposition or study: images of one or more modalities plus REMBI metadata."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    accession: Mapped[str | None] = mapped_column(String(64), nullable=True)
    licence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    rembi: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The image whose physical space is the dataset's reference space; None: the first EM image.
    reference_image: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # "public" or "private"; a private dataset with a release date is public from that day (UTC) on.
    visibility: Mapped[str] = mapped_column(String(16), default="public", server_default="public")
    release_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    images: Mapped[list[Image]] = relationship(
        back_populates="dataset", order_by="Image.id", cascade="all, delete-orphan"
    )


class Image(Base):
    """One modality of a dataset: an OME-Zarr multiscale image in a local folder or at a URL."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(64), default="EM")
    kind: Mapped[str] = mapped_column(String(16), default="image")  # image | segmentation
    # A segmentation names the image it labels (OME-Zarr labels of that image).
    labels_of: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), nullable=True)
    uri: Mapped[str] = mapped_column(Text)
    managed: Mapped[bool] = mapped_column(default=False)  # imported into the data directory
    ome_version: Mapped[str] = mapped_column(String(8))
    zarr_format: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[Any]] = mapped_column()  # z, y, x of level 0
    channels: Mapped[int] = mapped_column(Integer, default=1)
    voxel_size_nm: Mapped[list[Any]] = mapped_column()  # z, y, x
    levels: Mapped[list[Any]] = mapped_column()  # per level: path, shape, voxel size, chunk
    window: Mapped[list[Any]] = mapped_column()  # display contrast [low, high]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dataset: Mapped[Dataset] = relationship(back_populates="images")


class ImageTransform(Base):
    """A registration of an image into the space of a reference image of its dataset, with provenance.

    Rows are only ever added: the newest row of an image is its current transform, older rows
    are its history. Coordinates are physical nanometres, x, y, z (see ``tiling.transforms``).
    """

    __tablename__ = "image_transforms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    reference_image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # affine | tps
    dimensions: Mapped[int] = mapped_column(Integer)  # 2 or 3: the space the transform was made in
    matrix: Mapped[list[Any] | None] = mapped_column(nullable=True)  # 4x4; for tps its best affine
    landmarks: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # moving, reference, names
    method: Mapped[str] = mapped_column(String(32))  # how it was made: matrix, mobie, ec-clem, landmarks, …
    fit: Mapped[str | None] = mapped_column(String(16), nullable=True)  # rigid | similarity | affine | tps
    residuals_nm: Mapped[list[Any] | None] = mapped_column(nullable=True)
    rms_nm: Mapped[float | None] = mapped_column(Float, nullable=True)
    author: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set by ``lamella check --repair`` for a transform that cannot be used (e.g. non-finite): kept
    # as history, never current.
    quarantined_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    quarantine_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ViewerSession(Base):
    """A Neuroglancer viewer whose state the server owns (state-sync protocol generations)."""

    __tablename__ = "viewer_sessions"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=True, index=True
    )
    state: Mapped[dict[str, Any]] = mapped_column()
    generation: Mapped[str] = mapped_column(String(128))
    # Public name of the session in its view layers' URLs (``editing=<key>``): not a credential.
    view_key: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True, index=True)
    # The ids its edit layers hold, by layer id (``viewer_layers.held_by_layer`` of the state), what its
    # ``editing=<view_key>`` views leave out: read without reading the state.
    held: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column()
    config_generation: Mapped[str] = mapped_column(String(128))
    # The account that opened the session (None: anonymous); its rights on the dataset are the session's.
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Account(Base):
    """Someone who signs in (browser) or sends API tokens (scripts)."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | curator | annotator
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)  # Argon2id; None: no password
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token for scripts; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebSession(Base):
    """A browser sign-in; the cookie holds the secret, the database only its SHA-256."""

    __tablename__ = "web_sessions"
    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Membership(Base):
    """An account's role on one dataset: viewer, annotator or curator."""

    __tablename__ = "memberships"
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SignInFailure(Base):
    """A failed sign-in, by account name and by client address: the throttle counts these."""

    __tablename__ = "sign_in_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(300), index=True)  # "account:<name>" or "address:<ip>"
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class QuarantinedDocument(Base):
    """A stored document that could not be used (e.g. a viewer state with non-finite numbers), kept as found."""

    __tablename__ = "quarantined_documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # viewer_state | viewer_config
    ref: Mapped[str] = mapped_column(String(128), index=True)  # e.g. the viewer session token
    document: Mapped[str] = mapped_column(Text)  # the raw stored text, which may not be strict JSON
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationLayer(Base):
    """A named set of annotations of one dataset, drawn in its reference space (physical nm, x y z).

    ``spec`` holds the layer's annotation types, labels, typed properties and relationships (see
    ``annotations.layer_specs.LayerSpec``); ``generation`` grows with every write to the layer, so that
    derived values (spatial-index cell cut-offs of filtered views) can be cached per generation.
    ``cell_limit`` is the most annotations a spatial-index cell above the finest level serves, fixed when
    the layer is made (``AnnotationCellEntry`` rows are placed by it).
    """

    __tablename__ = "annotation_layers"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column()
    lower_bound: Mapped[list[Any]] = mapped_column()  # nm, x y z (inclusive)
    upper_bound: Mapped[list[Any]] = mapped_column()  # nm, x y z (exclusive)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The largest half side of any annotation ever stored (never lowered): how far a bounding-box look-up
    # widens its cell ranges, since annotations are filed by the centre of their bounding box.
    max_extent: Mapped[float] = mapped_column(Float, default=0.0)
    cell_limit: Mapped[int] = mapped_column(Integer, default=2000, server_default="2000")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Annotation(Base):
    """An annotation's identity: its layer, its creator and a fixed random key for spatial subsampling.

    Its content lives in ``AnnotationVersion`` rows, which are only added (an edit closes the current
    version and adds one; a delete closes it and adds a tombstone).
    """

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("annotation_layers.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationVersion(Base):
    """One version of an annotation, valid from ``valid_from`` until ``valid_to`` (None: current).

    ``cell`` is the Morton code of the finest spatial-index cell holding the annotation's anchor (the
    centre of its bounding box), ``sample_key`` its fixed random key in [0, 1); the bounding box columns and
    ``extent`` (the largest half side) serve bounding-box queries, of the current versions and as of a time
    (``ix_annotation_versions_cell``).

    ``layer_id`` and ``author_id`` have no foreign keys: the layer is the annotation's (deleting a layer deletes
    its annotations, which delete their versions), and accounts are disabled, never deleted. PostgreSQL checks
    each key of each new row by a trigger, a third of a second per key for a bulk create of 100,000.
    """

    __tablename__ = "annotation_versions"
    __table_args__ = (
        Index("ix_annotation_versions_cell", "layer_id", "cell", "valid_to"),
        Index("ix_annotation_versions_annotation", "annotation_id", "valid_from"),
        Index("ix_annotation_versions_layer_order", "layer_id", "annotation_id"),
        Index("ix_annotation_versions_layer_time", "layer_id", "valid_from"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"))
    layer_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))  # point | line | axis_aligned_bounding_box | ellipsoid | polyline
    geometry: Mapped[list[Any]] = mapped_column()  # flat float list (polyline: x y z per point)
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    properties: Mapped[dict[str, Any]] = mapped_column()
    segments: Mapped[dict[str, Any]] = mapped_column()  # relationship -> segment ids
    author_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    author: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    cell: Mapped[int] = mapped_column(BigInteger)
    sample_key: Mapped[float] = mapped_column(Float)
    x0: Mapped[float] = mapped_column(Float)
    y0: Mapped[float] = mapped_column(Float)
    z0: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    z1: Mapped[float] = mapped_column(Float)
    extent: Mapped[float] = mapped_column(Float)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AnnotationSegment(Base):
    """A related segment id of an annotation version (for the precomputed relationship index)."""

    __tablename__ = "annotation_segments"
    __table_args__ = (Index("ix_annotation_segments_lookup", "layer_id", "relationship", "segment_id"),)
    version_id: Mapped[int] = mapped_column(ForeignKey("annotation_versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    relationship: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("annotation_layers.id", ondelete="CASCADE"))


class AnnotationCellEntry(Base):
    """One annotation served by one spatial-index cell of the layer's ``current`` precomputed source, with its
    encoded record (geometry and properties as the format lays them out): a cell is one range of the primary
    key, read in key order and sent as stored (``annotations.spatial_rows``). ``kind`` is the annotation
    type's position in ``layer_specs.ANNOTATION_TYPES``; ``cell`` the cell's first finest Morton code.

    Kept with the current versions in the same transactions (``annotations.spatial_index`` says which
    annotations each cell serves); without a rowid on SQLite, so a cell's rows are stored together. Derived
    data without foreign keys (PostgreSQL checks each key of each row by a trigger, doubling a bulk insert):
    deleting a layer deletes its entries and counts (``annotations.spatial_rows.forget``).
    """

    __tablename__ = "annotation_cell_entries"
    __table_args__ = {"sqlite_with_rowid": False}
    layer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    cell: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sample_key: Mapped[float] = mapped_column(Float, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    record: Mapped[bytes] = mapped_column(LargeBinary)


class AnnotationCellCount(Base):
    """How many annotations a spatial-index cell above the finest level serves, and a bound no key of them
    exceeds (``spatial_index.CellCount``): placing reads these instead of counting a cell's entries."""

    __tablename__ = "annotation_cell_counts"
    __table_args__ = {"sqlite_with_rowid": False}
    layer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    cell: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer)
    max_key: Mapped[float] = mapped_column(Float)


class SharedView(Base):
    """A frozen copy of a viewer state behind a short link; opening it starts a new session from the copy."""

    __tablename__ = "shared_views"
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    state: Mapped[dict[str, Any]] = mapped_column()
    created_by: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)



class CrowdProject(Base):
    """A Citizen Science project on one image of a dataset: volunteers annotate its tasks with its workflow.

    ``status``: ``active`` (volunteers get tasks), ``paused`` (none are handed out) or ``finished``. The
    consensus of its submissions is kept in ``consensus_layer_id``, an annotation layer of the dataset.
    """

    __tablename__ = "crowd_projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    # Consensus settings: votes weighted by volunteer quality or not; the agreement a mark needs.
    weighted: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold: Mapped[float] = mapped_column(Float, default=0.5)
    consensus_layer_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotation_layers.id", ondelete="SET NULL"), nullable=True)
    salt: Mapped[str] = mapped_column(String(64))  # for the volunteer hashes of this project's exports
    created_by: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkflowVersion(Base):
    """One version of a project's workflow; rows are only added, the newest is current. Every submission
    names the version it was made with."""

    __tablename__ = "crowd_workflow_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("crowd_projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    instructions: Mapped[str] = mapped_column(Text, default="")
    tutorial: Mapped[list[Any]] = mapped_column()  # steps: text and an example picture's region
    tool: Mapped[str] = mapped_column(String(16))  # point | outline | box
    labels: Mapped[list[Any]] = mapped_column()
    task_shape: Mapped[list[Any]] = mapped_column()  # voxels, x y z
    redundancy: Mapped[int] = mapped_column(Integer)
    radius_nm: Mapped[float] = mapped_column(Float)  # how near two points must be to be one object
    created_by: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CrowdTask(Base):
    """A region of the project's image (level-0 voxels, x y z, upper exclusive) for volunteers to annotate.

    ``handed_out`` counts the task's assignments that are open or submitted: an assignment is made only by a
    conditional update that keeps it within the redundancy, so several server processes never over-assign.
    A gold-standard task carries the expert's ``answer`` and is not retired by submissions.
    """

    __tablename__ = "crowd_tasks"
    __table_args__ = (Index("ix_crowd_tasks_pick", "project_id", "gold", "status", "priority", "sort_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("crowd_projects.id", ondelete="CASCADE"))
    lower: Mapped[list[Any]] = mapped_column()
    upper: Mapped[list[Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | paused | retired
    priority: Mapped[int] = mapped_column(Integer, default=0)
    sort_key: Mapped[float] = mapped_column(Float)  # a fixed random order among equal priorities
    gold: Mapped[bool] = mapped_column(Boolean, default=False)
    answer: Mapped[list[Any] | None] = mapped_column(nullable=True)  # gold: the expert's marks
    handed_out: Mapped[int] = mapped_column(Integer, default=0)
    submissions: Mapped[int] = mapped_column(Integer, default=0)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    consensus: Mapped[list[Any] | None] = mapped_column(nullable=True)  # annotation ids in the consensus layer
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Volunteer(Base):
    """Someone taking part: an account, or an anonymous browser (only the SHA-256 of its cookie's id kept)."""

    __tablename__ = "crowd_volunteers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True, unique=True)
    browser_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Participation(Base):
    """A volunteer in one project: tutorial seen, counts, gold-standard record and quality."""

    __tablename__ = "crowd_participations"
    project_id: Mapped[int] = mapped_column(ForeignKey("crowd_projects.id", ondelete="CASCADE"), primary_key=True)
    volunteer_id: Mapped[int] = mapped_column(
        ForeignKey("crowd_volunteers.id", ondelete="CASCADE"), primary_key=True, index=True)
    tutorial_done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    submitted: Mapped[int] = mapped_column(Integer, default=0)
    gold_seen: Mapped[int] = mapped_column(Integer, default=0)
    gold_f1: Mapped[list[Any]] = mapped_column(default=list)  # per gold task submitted
    consensus_f1: Mapped[list[Any]] = mapped_column(default=list)  # per retired task, agreement with consensus
    quality: Mapped[float] = mapped_column(Float, default=0.5)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Assignment(Base):
    """A task handed to a volunteer: ``open`` until submitted or expired. One per task and volunteer, ever."""

    __tablename__ = "crowd_assignments"
    __table_args__ = (UniqueConstraint("task_id", "volunteer_id"),
                      Index("ix_crowd_assignments_open", "volunteer_id", "project_id", "status"),
                      Index("ix_crowd_assignments_expiry", "project_id", "status", "expires_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("crowd_projects.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("crowd_tasks.id", ondelete="CASCADE"))
    volunteer_id: Mapped[int] = mapped_column(ForeignKey("crowd_volunteers.id", ondelete="CASCADE"))
    workflow_version_id: Mapped[int] = mapped_column(ForeignKey("crowd_workflow_versions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | submitted | expired
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Submission(Base):
    """A volunteer's answer to a task: their marks (image voxels, x y z) or "nothing here"."""

    __tablename__ = "crowd_submissions"
    __table_args__ = (Index("ix_crowd_submissions_project_time", "project_id", "created_at"),
                      Index("ix_crowd_submissions_task", "task_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("crowd_assignments.id", ondelete="CASCADE"), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("crowd_projects.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("crowd_tasks.id", ondelete="CASCADE"))
    volunteer_id: Mapped[int] = mapped_column(ForeignKey("crowd_volunteers.id", ondelete="CASCADE"), index=True)
    workflow_version_id: Mapped[int] = mapped_column(ForeignKey("crowd_workflow_versions.id", ondelete="CASCADE"))
    nothing_here: Mapped[bool] = mapped_column(Boolean, default=False)
    marks: Mapped[list[Any]] = mapped_column()
    gold_f1: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RateEvent(Base):
    """A rate-limited act (a submission) by subject ("volunteer:<id>", "address:<sha256>"): the limit counts these."""

    __tablename__ = "crowd_rate_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (Index("ix_crowd_rate_events_subject_at", "subject", "at"),)
