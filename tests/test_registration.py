"""import_file with a catalog it opens itself: opened near the end of the conversion, and a taken
name still stops the import with nothing written."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from annotations.catalog import Catalog
from annotations.errors import NameTaken
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from viewer import registration
from viewer.cli import open_catalog
from viewer.config import Settings
from viewer.registration import add_existing, import_file

OPTIONS = PyramidOptions(chunk=16, shard_chunks=2)  # 32³ blocks: 2 x 8 x 8 = 128 of them


def stored_blocks(images: Path) -> int:
    return sum(1 for path in images.glob("d/.*.partial/0/c/*/*/*") if path.is_file())


def opener(data_dir: Path, images: Path, seen: list[int]) -> Callable[[], Catalog]:
    def open_it() -> Catalog:
        seen.append(stored_blocks(images))  # how far the conversion had got
        return open_catalog(Settings(data_dir=data_dir))

    return open_it


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    data_dir, images = tmp_path / "data", tmp_path / "data" / "images"
    volume = np.random.default_rng(3).integers(1, 255, (64, 256, 256), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "em.tif", volume)
    linked = tmp_path / "linked.ome.zarr"
    write_pyramid(ArraySource(volume[:8, :64, :64]), linked, voxel_size=(8, 8, 8), options=OPTIONS)
    add_existing(open_catalog(Settings(data_dir=data_dir)), str(linked), "d", name="taken")  # no folder in images
    return tmp_path / "em.tif", data_dir, images


def test_catalog_is_opened_near_the_end(setup: tuple[Path, Path, Path]) -> None:
    source, data_dir, images = setup
    seen: list[int] = []
    record = import_file(opener(data_dir, images, seen), images, str(source), "d", name="em", options=OPTIONS,
                         show_progress=False)
    assert [image.name for image in record.images] == ["taken", "em"]
    assert len(seen) == 1 and seen[0] >= registration.CATALOG_AT_FRACTION * 128  # reported stored by then


def test_taken_name_found_late_still_leaves_nothing(setup: tuple[Path, Path, Path]) -> None:
    source, data_dir, images = setup
    seen: list[int] = []
    with pytest.raises(NameTaken, match="'taken'"):
        import_file(opener(data_dir, images, seen), images, str(source), "d", name="taken", options=OPTIONS,
                    show_progress=False)
    assert seen and not any((images / "d").iterdir())


def test_catalog_is_opened_at_the_latest_after_a_while(setup: tuple[Path, Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source, data_dir, images = setup
    monkeypatch.setattr(registration, "CATALOG_AT_LATEST_S", 0.0)  # a long conversion: its first block is late
    seen: list[int] = []
    with pytest.raises(NameTaken):
        import_file(opener(data_dir, images, seen), images, str(source), "d", name="taken", options=OPTIONS,
                    show_progress=False)
    assert seen[0] < 0.5 * 128  # opened at the start, not near the end
