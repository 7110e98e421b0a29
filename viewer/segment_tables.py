"""Computing and storing a label image's segment table, for ``lamella segments`` and ``lamella import --labels``.

The names file is read and checked for malformed rows before any voxel is read, and against the
labels' ids before anything is written; the table then replaces any earlier one in one rename.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tiling.derived import derived_dir
from tiling.errors import NotSegmentation
from tiling.omezarr import make_context, open_volume
from tiling.segment_names import SegmentNames, read_names
from tiling.segment_store import write_table
from tiling.segments import Geometry, check_labels, measure
from viewer.registration import progress_bar

if TYPE_CHECKING:
    from annotations.catalog import Catalog, ImageRecord


def build_segments(uri: str, derived: Path, names: SegmentNames | None = None, names_source: str = "",
                   show_progress: bool = False, description: str = "segments") -> np.ndarray:
    """Measure the label image at ``uri`` and store its table (with ``names``) in ``derived/segments/``.

    Raises:
        NotSegmentation: the image is not one channel of unsigned integers.
        InvalidSegmentNames: a name is for an id the labels do not hold (nothing is written).
    """

    async def run() -> tuple[np.ndarray, Geometry]:
        volume = await open_volume(uri, make_context(64 << 20))
        check_labels(volume)
        total = int(np.prod(volume.geometry[0].shape, dtype=np.int64))
        with progress_bar(total, description, show_progress) as bar:
            table = await measure(volume, progress=bar.update if bar is not None else None)
        return table, Geometry.of(volume)

    table, geometry = asyncio.run(run())
    if names is not None:
        names.check_known(table["id"], names_source)
    write_table(derived, table, geometry, names)
    return table


def compute_segments(catalog: Catalog, images_dir: Path, dataset: str, image: str, names_file: Path | None = None,
                     show_progress: bool = False) -> tuple[ImageRecord, np.ndarray]:
    """(Re)compute the segment table of a registered label image; returns it with the image's record."""
    names = read_names(names_file) if names_file is not None else None
    record = catalog.get_image(dataset, image)
    if record.kind != "segmentation":
        raise NotSegmentation(f"image {image!r} of dataset {dataset!r} is not a segmentation (lamella add --labels, "
                              "lamella import --labels)")
    folder = derived_dir(record.uri, record.managed, images_dir, record.id)
    table = build_segments(record.uri, folder, names, str(names_file), show_progress, f"segments of {image}")
    return record, table
