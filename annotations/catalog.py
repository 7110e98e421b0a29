"""The catalog: datasets and their images. Returns records, never ORM rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from annotations.errors import DatasetNotFound, ImageNotFound, NameTaken
from annotations.metadata import DatasetMetadata
from annotations.models import Dataset, Image
from annotations.names import check_name


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
MAX_ID = 2**31 - 1


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
    created_at: UtcDatetime
    images: list[ImageRecord]

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


def _dataset_record(row: Dataset) -> DatasetRecord:
    return DatasetRecord(
        id=row.id,
        name=row.name,
        title=row.title,
        description=row.description,
        accession=row.accession,
        licence=row.licence,
        rembi=row.rembi,
        reference_image=row.reference_image,
        created_at=row.created_at,
        images=[_image_record(image) for image in row.images],
    )


class Catalog:
    """Datasets and images in the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def _find(self, session: Session, ref: str | int) -> Dataset:
        query = select(Dataset).options(selectinload(Dataset.images))
        text = str(ref)
        if text.isdigit():
            if int(text) > MAX_ID:
                raise DatasetNotFound(f"no dataset {text}")
            query = query.where(Dataset.id == int(text))
        else:
            query = query.where(Dataset.name == text)
        row = session.scalars(query).first()
        if row is None:
            raise DatasetNotFound(f"no dataset {text!r}")
        return row

    def list_datasets(self) -> list[DatasetRecord]:
        with self.sessions() as session:
            rows = session.scalars(select(Dataset).options(selectinload(Dataset.images)).order_by(Dataset.id))
            return [_dataset_record(row) for row in rows]

    def get_dataset(self, ref: str | int) -> DatasetRecord:
        with self.sessions() as session:
            return _dataset_record(self._find(session, ref))

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
        self, dataset_name: str, image: ImageSpec, metadata: DatasetMetadata | None = None
    ) -> DatasetRecord:
        """Add ``image`` to the dataset, creating the dataset if needed, in one transaction.

        Metadata given for an existing dataset replaces its REMBI record.
        """
        check_name(dataset_name, "dataset")
        check_name(image.name, "image")
        with self.sessions.begin() as session:
            dataset = session.scalars(select(Dataset).where(Dataset.name == dataset_name)).first()
            if dataset is None:
                dataset = Dataset(name=dataset_name, title=dataset_name, description="", rembi={})
                session.add(dataset)
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

    def has_image(self, dataset_name: str, image_name: str) -> bool:
        with self.sessions() as session:
            query = (
                select(Image.id)
                .join(Dataset)
                .where(Dataset.name == dataset_name, Image.name == image_name)
            )
            return session.scalars(query).first() is not None
