"""Stored registrations: each image's transform into its dataset's reference space, and their history."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from annotations.catalog import UtcDatetime
from annotations.errors import ForeignImage, ImageNotFound, TransformNotFound
from annotations.models import Image, ImageTransform


class TransformSpec(BaseModel):
    """A checked transform ready to store (the checking is the caller's: see ``tiling.transforms``)."""

    kind: str  # affine | tps
    dimensions: int
    matrix: list[list[float]] | None = None
    landmarks: dict[str, Any] | None = None  # {"moving": [[x, y, z], …], "reference": […], "names": […]}
    method: str
    fit: str | None = None
    residuals_nm: list[float | None] | None = None  # null where not measurable
    rms_nm: float | None = None
    author: str = ""
    note: str = ""


class TransformRecord(TransformSpec):
    id: int
    image_id: int
    reference_image_id: int
    created_at: UtcDatetime
    quarantined_at: UtcDatetime | None = None  # set: kept as history, never current
    quarantine_reason: str | None = None


def _record(row: ImageTransform) -> TransformRecord:
    return TransformRecord.model_validate(row, from_attributes=True)


class Transforms:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def current_for(self, image_ids: list[int], reference_image_id: int) -> dict[int, TransformRecord]:
        """The newest transform into ``reference_image_id`` of each image that has one."""
        if not image_ids:
            return {}
        with self.sessions() as session:
            rows = session.scalars(
                select(ImageTransform)
                .where(
                    ImageTransform.image_id.in_(image_ids),
                    ImageTransform.reference_image_id == reference_image_id,
                    ImageTransform.quarantined_at.is_(None),
                )
                .order_by(ImageTransform.image_id, ImageTransform.id.desc())
            )
            current: dict[int, TransformRecord] = {}
            for row in rows:
                current.setdefault(row.image_id, _record(row))
            return current

    def get(self, transform_id: int) -> TransformRecord:
        with self.sessions() as session:
            row = session.get(ImageTransform, transform_id) if 0 < transform_id < 2**31 else None
            if row is None or row.quarantined_at is not None:
                raise TransformNotFound(f"no transform {transform_id}")
            return _record(row)

    def history(self, image_id: int) -> list[TransformRecord]:
        with self.sessions() as session:
            rows = session.scalars(
                select(ImageTransform).where(ImageTransform.image_id == image_id).order_by(ImageTransform.id.desc())
            )
            return [_record(row) for row in rows]

    def save(self, image_id: int, reference_image_id: int, spec: TransformSpec) -> TransformRecord:
        """Store a new current transform for ``image_id``, in one transaction.

        Raises ImageNotFound, or ForeignImage when the reference lies in another dataset.
        """
        with self.sessions.begin() as session:
            image = session.get(Image, image_id)
            reference = session.get(Image, reference_image_id)
            if image is None or reference is None:
                raise ImageNotFound(f"no image with id {image_id if image is None else reference_image_id}")
            if image.dataset_id != reference.dataset_id:
                raise ForeignImage(
                    f"image {reference.name!r} belongs to another dataset; "
                    "a transform maps into a reference image of the same dataset"
                )
            row = ImageTransform(image_id=image_id, reference_image_id=reference_image_id, **spec.model_dump())
            session.add(row)
            session.flush()
            return _record(row)
