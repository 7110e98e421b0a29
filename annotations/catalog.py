"""The catalog: datasets and their images. Returns records, never ORM rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from annotations.access import Actor, check_visibility, dataset_where, is_public, not_found, visible_clause
from annotations.errors import ImageNotFound, InvalidAccess, InvalidMetadata, NameTaken
from annotations.metadata import DatasetMetadata
from annotations.models import Dataset, Image, ImageTransform, Membership
from annotations.names import NoNulSchema, check_name, no_nul

if TYPE_CHECKING:
    from annotations.transforms import TransformSpec


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
StoredText = Annotated[str, AfterValidator(no_nul), NoNulSchema()]


class ImageRecord(BaseModel):
    id: int
    dataset_id: int
    name: str
    modality: str
    kind: str
    labels_of: int | None = None
    uri: str
    managed: bool
    ome_version: str
    zarr_format: int
    dtype: str
    shape: list[int]
    channels: int
    voxel_size_nm: list[float]
    levels: list[dict[str, Any]]
    window: list[float]
    created_at: UtcDatetime


class DatasetRecord(BaseModel):
    id: int
    name: str
    title: str
    description: str
    accession: str | None
    licence: str | None
    rembi: dict[str, Any]
    reference_image: str | None = None
    visibility: str = "public"
    release_date: date | None = None
    created_at: UtcDatetime
    images: list[ImageRecord]

    @property
    def public(self) -> bool:
        return is_public(self.visibility, self.release_date)

    def image(self, name: str) -> ImageRecord:
        for image in self.images:
            if image.name == name:
                return image
        raise ImageNotFound(f"dataset {self.name!r} has no image {name!r}")

    def reference(self) -> ImageRecord | None:
        """The image whose physical space is the dataset's reference space.

        The one chosen for the dataset, else its first EM image, else its first image.
        """
        if self.reference_image is not None:
            return self.image(self.reference_image)
        pictures = [image for image in self.images if image.kind == "image"] or self.images
        return next((image for image in pictures if image.modality == "EM"), pictures[0] if pictures else None)


class NewDataset(BaseModel):
    """How a dataset starts: its visibility, release date, title and curator (an account id)."""

    title: StoredText | None = Field(None, max_length=500)
    description: StoredText = Field("", max_length=20_000)
    visibility: str = "public"
    release_date: date | None = None
    curator: int | None = None


class DatasetChanges(BaseModel):
    """A curator's changes to a dataset's description (only the fields given change; null clears)."""

    title: StoredText = Field(None, min_length=1, max_length=500)  # type: ignore[assignment]  # absent: unchanged
    description: StoredText = Field(None, max_length=20_000)  # type: ignore[assignment]
    licence: StoredText | None = Field(None, max_length=200)
    accession: StoredText | None = Field(None, max_length=64)
    reference_image: StoredText | None = Field(None, max_length=64)


class ImageSpec(BaseModel):
    """What registering an image needs: where it is and what tiling read from it."""

    name: str
    modality: str = "EM"
    kind: str = "image"
    labels_of: int | None = None
    uri: str
    managed: bool = False
    ome_version: str
    zarr_format: int
    dtype: str
    shape: list[int]
    channels: int = 1
    voxel_size_nm: list[float]
    levels: list[dict[str, Any]]
    window: list[float]


def _image_record(row: Image) -> ImageRecord:
    return ImageRecord.model_validate(row, from_attributes=True)


def dataset_record(row: Dataset) -> DatasetRecord:
    """The record of a dataset row (its images loaded, or loadable in the row's session)."""
    return DatasetRecord(
        id=row.id,
        name=row.name,
        title=row.title,
        description=row.description,
        accession=row.accession,
        licence=row.licence,
        rembi=row.rembi,
        reference_image=row.reference_image,
        visibility=row.visibility,
        release_date=row.release_date,
        created_at=row.created_at,
        images=[_image_record(image) for image in row.images],
    )


class Catalog:
    """Datasets and images in the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def _find(self, session: Session, ref: str | int) -> Dataset:
        row = session.scalars(select(Dataset).options(selectinload(Dataset.images)).where(dataset_where(ref))).first()
        if row is None:
            raise not_found(ref)
        return row

    def list_datasets(self, actor: Actor | None = None) -> list[DatasetRecord]:
        """Every dataset, or (given an actor) those the actor may read."""
        query = select(Dataset).options(selectinload(Dataset.images)).order_by(Dataset.id)
        if actor is not None:
            query = query.where(visible_clause(actor))
        with self.sessions() as session:
            return [dataset_record(row) for row in session.scalars(query)]

    def create_dataset(self, name: str, spec: NewDataset) -> DatasetRecord:
        """A new, empty dataset; its ``curator`` (an account id) becomes its curator."""
        check_name(name, "dataset")
        with self.sessions.begin() as session:
            dataset = self._new_dataset(session, name, spec)
            dataset_id = dataset.id
        return self.get_dataset(dataset_id)

    def update_dataset(self, ref: str | int, changes: DatasetChanges) -> DatasetRecord:
        """Change a dataset's title, description, licence, accession or reference image."""
        given = changes.model_dump(exclude_unset=True)
        for key in ("title", "description"):
            if key in given and given[key] is None:
                raise InvalidMetadata(f"a dataset's {key} cannot be null")
        with self.sessions.begin() as session:
            dataset = self._find(session, ref)
            reference = given.get("reference_image")
            if reference is not None and not any(image.name == reference for image in dataset.images):
                raise ImageNotFound(f"dataset {dataset.name!r} has no image {reference!r}")
            for key, value in given.items():
                setattr(dataset, key, value)
            dataset_id = dataset.id
        return self.get_dataset(dataset_id)

    @staticmethod
    def _new_dataset(session: Session, name: str, spec: NewDataset) -> Dataset:
        check_visibility(spec.visibility)
        if spec.visibility == "public" and spec.release_date is not None:
            raise InvalidAccess("a release date is for private datasets (they become public on that day)")
        if session.scalars(select(Dataset.id).where(Dataset.name == name)).first() is not None:
            raise NameTaken(f"there is already a dataset {name!r}")
        dataset = Dataset(name=name, title=spec.title or name, description=spec.description, rembi={},
                          visibility=spec.visibility, release_date=spec.release_date)
        session.add(dataset)
        try:
            session.flush()
        except IntegrityError:
            raise NameTaken(f"there is already a dataset {name!r}") from None
        if spec.curator is not None:
            session.add(Membership(dataset_id=dataset.id, account_id=spec.curator, role="curator"))
        return dataset

    def get_dataset(self, ref: str | int) -> DatasetRecord:
        with self.sessions() as session:
            return dataset_record(self._find(session, ref))

    def get_image(self, dataset_ref: str | int, image_name: str) -> ImageRecord:
        return self.get_dataset(dataset_ref).image(image_name)

    def set_reference(self, dataset_ref: str | int, image_name: str) -> DatasetRecord:
        """Make ``image_name`` the dataset's reference space."""
        with self.sessions.begin() as session:
            dataset = self._find(session, dataset_ref)
            if not any(image.name == image_name for image in dataset.images):
                raise ImageNotFound(f"dataset {dataset.name!r} has no image {image_name!r}")
            dataset.reference_image = image_name
            dataset_id = dataset.id
        return self.get_dataset(dataset_id)

    def register(
        self,
        dataset_name: str,
        image: ImageSpec,
        metadata: DatasetMetadata | None = None,
        new: NewDataset | None = None,
    ) -> DatasetRecord:
        """Add ``image`` to the dataset, creating the dataset (as ``new`` says) if needed, in one transaction.

        Metadata given for an existing dataset replaces its REMBI record. A curator named in ``new``
        must already curate an existing dataset.
        """
        check_name(dataset_name, "dataset")
        check_name(image.name, "image")
        new = new or NewDataset()
        with self.sessions.begin() as session:
            dataset = session.scalars(select(Dataset).where(Dataset.name == dataset_name)).first()
            if dataset is None:
                dataset = self._new_dataset(session, dataset_name, new)
            elif new.curator is not None:
                membership = session.get(Membership, (dataset.id, new.curator))
                if membership is None or membership.role != "curator":
                    raise InvalidAccess(f"the account given is not a curator of dataset {dataset_name!r}")
            if metadata is not None:
                dataset.title = metadata.title or metadata.study.title or dataset.title
                dataset.description = metadata.description or metadata.study.description or ""
                dataset.accession = metadata.accession
                dataset.licence = metadata.licence
                dataset.rembi = metadata.rembi()
            session.flush()
            taken = session.scalars(
                select(Image.id).where(Image.dataset_id == dataset.id, Image.name == image.name)
            ).first()
            if taken is not None:
                raise NameTaken(f"dataset {dataset_name!r} already has an image {image.name!r}")
            session.add(Image(dataset_id=dataset.id, **image.model_dump()))
            try:
                session.flush()
            except IntegrityError:
                raise NameTaken(f"dataset {dataset_name!r} already has an image {image.name!r}") from None
            dataset_id = dataset.id
        return self.get_dataset(dataset_id)

    def register_entry(
        self,
        dataset_name: str,
        images: Sequence[ImageSpec],
        metadata: DatasetMetadata,
        new: NewDataset | None = None,
        transforms: Sequence[tuple[str, str, TransformSpec]] = (),
    ) -> DatasetRecord:
        """A new dataset holding ``images``, its metadata and the transforms between them, in one transaction.

        ``transforms`` are (moving image, reference image, checked transform) by image name. Nothing is
        stored unless everything is: the dataset row appears only with all its images and transforms.

        Raises:
            NameTaken: the dataset exists, or two images share a name.
            ImageNotFound: a transform names an image not in ``images``.
        """
        check_name(dataset_name, "dataset")
        names = [check_name(image.name, "image") for image in images]
        if len(set(names)) != len(names):
            raise NameTaken(f"two images of dataset {dataset_name!r} would share a name")
        with self.sessions.begin() as session:
            dataset = self._new_dataset(session, dataset_name, new or NewDataset())
            dataset.title = metadata.title or metadata.study.title or dataset.title
            dataset.description = metadata.description or metadata.study.description or ""
            dataset.accession = metadata.accession
            dataset.licence = metadata.licence
            dataset.rembi = metadata.rembi()
            rows = {image.name: Image(dataset_id=dataset.id, **image.model_dump()) for image in images}
            session.add_all(rows.values())
            session.flush()
            for moving, reference, spec in transforms:
                if moving not in rows or reference not in rows:
                    missing = moving if moving not in rows else reference
                    raise ImageNotFound(f"dataset {dataset_name!r} has no image {missing!r} for a transform")
                session.add(ImageTransform(image_id=rows[moving].id, reference_image_id=rows[reference].id,
                                           **spec.model_dump()))
            if transforms:  # stored transforms map into the dataset's reference space
                dataset.reference_image = transforms[0][1]
            session.flush()
            dataset_id = dataset.id
        return self.get_dataset(dataset_id)

    def has_image(self, dataset_name: str, image_name: str) -> bool:
        with self.sessions() as session:
            query = (
                select(Image.id)
                .join(Dataset)
                .where(Dataset.name == dataset_name, Image.name == image_name)
            )
            return session.scalars(query).first() is not None
