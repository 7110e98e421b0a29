"""A dataset's images and current transforms as an OME-Zarr 0.6 scene (``tiling.scenes``).

Composes the catalog and the stored transforms (``annotations``) with the scene writer (``tiling``): the
dataset's reference image is the scene's reference, every other image is placed by its current transform (a
segmentation by the transform of the image it labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from annotations.catalog import DatasetRecord, ImageRecord
from annotations.transforms import TransformRecord
from tiling.scene_transforms import SceneProblem
from tiling.scenes import AffinePlacement, Placement, SceneFile, SceneImage, SplinePlacement, plan_scene
from tiling.transforms import check_affine, check_points
from viewer.correlation import Correlation


def _placement(record: TransformRecord) -> Placement:
    if record.kind == "tps" and record.landmarks:
        moving = check_points(record.landmarks["moving"], "moving landmarks")
        reference = check_points(record.landmarks["reference"], "reference landmarks")
        return SplinePlacement(moving, reference, record.dimensions)
    return AffinePlacement(check_affine(record.matrix))


def _provenance(dataset: DatasetRecord, reference: ImageRecord, current: dict[int, TransformRecord],
                placed_by: dict[int, int]) -> dict[str, Any]:
    images: dict[str, Any] = {}
    for image in dataset.images:
        entry: dict[str, Any] = {"modality": image.modality, "kind": image.kind}
        record = current.get(placed_by.get(image.id, image.id))
        if image.labels_of is not None:
            entry["labels_of"] = next(other.name for other in dataset.images if other.id == image.labels_of)
        if record is not None:
            entry["transform"] = {"id": record.id, "kind": record.kind, "method": record.method, "fit": record.fit,
                                  "rms_nm": record.rms_nm, "residuals_nm": record.residuals_nm,
                                  "landmarks": record.landmarks, "author": record.author,
                                  "created_at": record.created_at.isoformat()}
        images[image.name] = entry
    return {"dataset": dataset.name, "reference_image": reference.name, "images": images,
            "convention": "landmarks and residuals in nm, x y z; moving physical -> reference physical"}


def scene_images(correlation: Correlation, dataset: DatasetRecord) -> tuple[list[SceneImage], dict[str, Any]]:
    """The scene's images (local folders, placements) and the provenance written beside ``ome``.

    Raises:
        SceneProblem: no reference image, no transforms at all, an image without a transform, a remote image.
    """
    reference = dataset.reference()
    if reference is None:
        raise SceneProblem(f"dataset {dataset.name!r} has no images")
    current = correlation.current_transforms(dataset)
    if not current:
        raise SceneProblem(f"dataset {dataset.name!r} has no transforms: nothing places its images in a common "
                           "space (lamella register first)")
    placed_by = {image.id: image.labels_of if image.labels_of is not None else image.id for image in dataset.images}
    images = []
    for image in dataset.images:
        scheme = urlsplit(image.uri).scheme
        if scheme in ("http", "https", "s3", "gs"):
            raise SceneProblem(f"image {image.name!r} is at {image.uri}: only images on this machine are exported")
        owner = placed_by[image.id]
        if owner == reference.id:
            placement: Placement = None if image.id == reference.id else AffinePlacement(np.eye(4))
        elif owner in current:
            placement = _placement(current[owner])
        else:
            raise SceneProblem(f"image {image.name!r} has no transform into the reference {reference.name!r}")
        location = urlsplit(image.uri).path if scheme == "file" else image.uri
        images.append(SceneImage(image.name, Path(location).expanduser(), placement))
    return images, _provenance(dataset, reference, current, placed_by)


def plan_dataset_scene(correlation: Correlation, dataset_ref: str | int) -> tuple[DatasetRecord, list[SceneFile]]:
    """Every file of the dataset's scene (``tiling.scenes.plan_scene``).

    Raises:
        DatasetNotFound, SceneProblem.
    """
    dataset = correlation.catalog.get_dataset(dataset_ref)
    images, provenance = scene_images(correlation, dataset)
    return dataset, plan_scene(images, provenance)
