"""The lamella command as a user runs it: subprocesses, real files, one-line errors."""

import concurrent.futures
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

from tests.conftest import LAMELLA, ROOT, SHARED_DATA, Server, shared_file, start_server, stop_server

COMMANDS = ["serve", "add", "import", "demo", "init-db", "datasets", "check", "register", "user", "token", "member",
            "visibility", "annotations", "add-entry", "export-scene", "scene-map"]


def lamella(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMELLA, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def catalog(data_dir: Path) -> dict[str, list[str]]:
    out = lamella("datasets", "--data-dir", str(data_dir), check=True).stdout
    datasets: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if not line.startswith("\t"):
            current = line.split("\t")[1]
            datasets[current] = []
        else:
            datasets[current].append(line.split("\t")[1])  # type: ignore[index]
    return datasets


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%" not in line]
    assert len(lines) == 1 and lines[0].startswith("lamella: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_help_lists_every_command() -> None:
    """The top-level help as a user runs it; each command's help through click's runner (the same code, without
    a process start per command)."""
    from click.testing import CliRunner

    from viewer.cli import main

    out = lamella("--help", check=True).stdout
    for command in COMMANDS:
        assert command in out
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert lamella("--version", check=True).stdout == f"lamella {version('lamella')}\n"


def test_import_tiff_mrc_and_slices(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    volume = np.random.default_rng(3).integers(0, 60000, size=(12, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", volume, compression="zlib")
    lamella("import", str(tmp_path / "stack.tif"), "--dataset", "t", "--voxel-size", "30,5,5", "--quiet",
            "--data-dir", str(data_dir), check=True)
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(volume.astype(np.float32))
        mrc.voxel_size = (20.0, 20.0, 20.0)  # Å
    lamella("import", str(tmp_path / "map.mrc"), "--dataset", "t", "--quiet", "--format", "0.4",
            "--data-dir", str(data_dir), check=True)
    slices = tmp_path / "slices"
    slices.mkdir()
    for z in range(volume.shape[0]):  # natural order: s2 before s10
        tifffile.imwrite(slices / f"s{z}.tif", volume[z])
    lamella("import", str(slices), "--dataset", "t", "--name", "slices", "--quiet", "--data-dir", str(data_dir),
            check=True)
    assert catalog(data_dir) == {"t": ["stack", "map", "slices"]}
    images = data_dir / "images" / "t"
    np.testing.assert_array_equal(zarr.open_group(images / "stack.ome.zarr", mode="r")["0"][:], volume)
    np.testing.assert_array_equal(zarr.open_group(images / "slices.ome.zarr", mode="r")["0"][:], volume)
    mapped = zarr.open_group(images / "map.ome.zarr", mode="r")
    np.testing.assert_array_equal(mapped["0"][:], volume.astype(np.float32))
    scale = mapped.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [2.0, 2.0, 2.0]  # 20 Å in nm


def test_failed_imports_leave_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    lamella("init-db", "--data-dir", str(data_dir), check=True)
    truncated = tmp_path / "truncated.tif"
    tifffile.imwrite(tmp_path / "whole.tif", np.ones((8, 64, 64), np.uint8))
    truncated.write_bytes((tmp_path / "whole.tif").read_bytes()[:5000])
    assert_one_line_error(lamella("import", str(truncated), "--dataset", "x", "--data-dir", str(data_dir)),
                          "truncated.tif")
    tifffile.imwrite(tmp_path / "zlib.tif", np.random.default_rng(8).integers(0, 255, (8, 64, 64), np.uint8),
                     compression="zlib")
    half = tmp_path / "half-zlib.tif"  # found through tifffile's log, which the CLI otherwise silences
    half.write_bytes((tmp_path / "zlib.tif").read_bytes()[: (tmp_path / "zlib.tif").stat().st_size // 2])
    assert_one_line_error(lamella("import", str(half), "--dataset", "x", "--data-dir", str(data_dir)),
                          "half-zlib.tif", "truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(lamella("import", str(empty), "--dataset", "x", "--data-dir", str(data_dir)), "no TIFF")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "a1.tif", np.ones((16, 16), np.uint8))
    tifffile.imwrite(mixed / "a2.tif", np.ones((16, 17), np.uint8))
    assert_one_line_error(lamella("import", str(mixed), "--dataset", "x", "--data-dir", str(data_dir)), "a2.tif")
    corrupt = tmp_path / "bad.mrc"
    corrupt.write_bytes(b"\x00" * 100)
    assert_one_line_error(lamella("import", str(corrupt), "--dataset", "x", "--data-dir", str(data_dir)), "bad.mrc")
    assert_one_line_error(lamella("import", str(tmp_path / "missing.tif"), "--dataset", "x",
                                  "--data-dir", str(data_dir)), "missing.tif")
    assert_one_line_error(lamella("add", str(tmp_path), "--dataset", "x", "--data-dir", str(data_dir)), "OME-Zarr")
    bad_meta = tmp_path / "meta.yaml"
    bad_meta.write_text("accession: nonsense\n")
    assert_one_line_error(lamella("import", str(tmp_path / "whole.tif"), "--dataset", "x", "--metadata",
                                  str(bad_meta), "--data-dir", str(data_dir)), "accession")
    assert catalog(data_dir) == {}
    images = data_dir / "images"
    assert not images.exists() or not any(images.rglob("*.zarr*"))


def test_add_local_and_remote_with_metadata(tmp_path: Path, server: Server) -> None:
    data_dir = tmp_path / "data"
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"title": "Remote copy", "accession": "EMPIAR-10982", "licence": "CC0",
                                "biosample": {"organism": "Caenorhabditis elegans"}}))
    remote = server.url + "/api/datasets/tests/images/u16/zarr/"
    lamella("add", remote, "--dataset", "remote", "--name", "u16", "--metadata", str(meta),
            "--data-dir", str(data_dir), check=True)
    second = start_server(data_dir)
    try:
        dataset = second.get("/api/datasets/remote").json()
        assert dataset["accession"] == "EMPIAR-10982" and dataset["images"][0]["shape"]["x"] == 90
        original = server.get("/api/datasets/tests/images/u16/precomputed/0/0-32_0-32_0-32").content
        proxied = second.get("/api/datasets/remote/images/u16/precomputed/0/0-32_0-32_0-32").content
        assert proxied == original
        assert second.get("/api/datasets/remote/images/u16/zarr/zarr.json").json()["zarr_format"] == 3
    finally:
        stop_server(second)


def test_broken_store_is_contained(tmp_path: Path) -> None:
    """A store deleted or corrupted after registration: a clear 503 for it, everything else still served."""
    from tiling.pyramid import write_pyramid
    from tiling.sources import ArraySource

    data_dir = tmp_path / "data"
    for name in ("good", "gone", "corrupt"):
        write_pyramid(ArraySource(np.ones((8, 32, 32), np.uint8)), tmp_path / f"{name}.ome.zarr", voxel_size=(1, 1, 1))
        lamella("add", str(tmp_path / f"{name}.ome.zarr"), "--dataset", "s", "--name", name,
                "--data-dir", str(data_dir), check=True)
    shutil.rmtree(tmp_path / "gone.ome.zarr")
    (tmp_path / "corrupt.ome.zarr" / "0" / "zarr.json").write_text("{not json")
    running = start_server(data_dir)
    try:
        for name, code in (("gone", "store_missing"), ("corrupt", "store_unreadable")):
            response = running.get(f"/api/datasets/s/images/{name}/precomputed/info")
            assert response.status_code == 503 and response.json()["code"] == code, response.text
        assert running.get("/api/datasets/s/images/good/precomputed/info").status_code == 200
        assert running.get("/api/datasets/s").status_code == 200
    finally:
        stop_server(running)
    result = lamella("check", "--data-dir", str(data_dir))
    assert result.returncode == 1 and "broken\ts/gone" in result.stdout and "ok\ts/good" in result.stdout


def test_taken_names_and_unusable_database_stop_an_import(tmp_path: Path) -> None:
    """The catalog opens near the end of the conversion: a taken name or a database that cannot be
    reached still ends in one line, with nothing written and the existing image untouched."""
    data_dir = tmp_path / "data"
    volume = np.random.default_rng(7).integers(0, 255, size=(64, 256, 256), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "em.tif", volume)
    lamella("import", str(tmp_path / "em.tif"), "--dataset", "d", "--quiet", "--data-dir", str(data_dir), check=True)
    images = data_dir / "images" / "d"
    before = {p: p.stat().st_mtime_ns for p in images.rglob("*")}
    assert_one_line_error(lamella("import", str(tmp_path / "em.tif"), "--dataset", "d", "--quiet",
                                  "--data-dir", str(data_dir)), "already has an image 'em'")
    lamella("add", str(images / "em.ome.zarr"), "--dataset", "d", "--name", "linked", "--data-dir", str(data_dir),
            check=True)  # registered, with no folder of that name under images/
    assert_one_line_error(lamella("import", str(tmp_path / "em.tif"), "--dataset", "d", "--name", "linked",
                                  "--quiet", "--data-dir", str(data_dir)), "already has an image 'linked'")
    assert {p: p.stat().st_mtime_ns for p in images.rglob("*")} == before
    assert catalog(data_dir) == {"d": ["em", "linked"]}
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    assert_one_line_error(lamella("import", str(tmp_path / "em.tif"), "--dataset", "e", "--quiet",
                                  "--database-url", unreachable, "--data-dir", str(data_dir)),
                          "cannot use the database", "127.0.0.1")
    assert not (data_dir / "images" / "e").exists() or not any((data_dir / "images" / "e").iterdir())
    assert_one_line_error(lamella("datasets", "--database-url", unreachable), "cannot use the database")


def test_zstd_level(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    volume = np.random.default_rng(6).integers(0, 255, size=(8, 160, 160), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "em.tif", volume)
    result = lamella("import", str(tmp_path / "em.tif"), "--dataset", "z", "--zstd-level", "0",
                     "--data-dir", str(data_dir))
    assert result.returncode == 2 and "--zstd-level" in result.stderr and "Traceback" not in result.stderr
    runs: list[tuple[str, list[str]]] = [("default", []), ("v3", ["--zstd-level", "9"]),
                                         ("v2", ["--zstd-level", "5", "--format", "0.4"])]
    for name, extra in runs:
        lamella("import", str(tmp_path / "em.tif"), "--dataset", "z", "--name", name, "--quiet", *extra,
                "--data-dir", str(data_dir), check=True)
    images = data_dir / "images" / "z"

    def zstd(path: Path) -> int:
        if (path / ".zarray").exists():
            return json.loads((path / ".zarray").read_text())["compressor"]["level"]
        codecs = json.loads((path / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
        return next(c["configuration"]["level"] for c in codecs if c["name"] == "zstd")

    assert [zstd(images / f"{name}.ome.zarr" / level) for name in ("default", "v3", "v2") for level in "01"] == \
        [1, 1, 9, 9, 5, 5]
    np.testing.assert_array_equal(zarr.open_group(images / "v3.ome.zarr", mode="r")["0"][:], volume)


@pytest.mark.parametrize("bad", ["0,1", "a,b,c", "1,2,3,4"])
def test_bad_voxel_size(tmp_path: Path, bad: str) -> None:
    result = lamella("import", "x.tif", "--dataset", "x", "--voxel-size", bad, "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "voxel" in result.stderr.lower() and "Traceback" not in result.stderr


def test_import_labels_cli(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    image = np.random.default_rng(4).integers(0, 255, size=(10, 128, 160), dtype=np.uint8)
    labels = (np.arange(10 * 128 * 160, dtype=np.uint32).reshape(10, 128, 160) // 100).astype(np.uint32)
    tifffile.imwrite(tmp_path / "em.tif", image)
    tifffile.imwrite(tmp_path / "seg.tif", labels)
    tifffile.imwrite(tmp_path / "wrong.tif", labels[:, :16])
    lamella("import", str(tmp_path / "em.tif"), "--dataset", "d", "--voxel-size", "40,10,10", "--quiet",
            "--data-dir", str(data_dir), check=True)
    assert_one_line_error(lamella("import", str(tmp_path / "wrong.tif"), "--dataset", "d", "--labels", "em",
                                  "--data-dir", str(data_dir)), "wrong.tif")
    assert_one_line_error(lamella("import", str(tmp_path / "seg.tif"), "--dataset", "d", "--labels", "nope",
                                  "--data-dir", str(data_dir)), "nope")
    lamella("import", str(tmp_path / "seg.tif"), "--dataset", "d", "--labels", "em", "--downsample", "stride",
            "--zstd-level", "7", "--quiet", "--data-dir", str(data_dir), check=True)
    assert catalog(data_dir) == {"d": ["em", "seg"]}
    group = zarr.open_group(data_dir / "images" / "d" / "em.ome.zarr" / "labels" / "seg", mode="r")
    np.testing.assert_array_equal(group["0"][:], labels)
    np.testing.assert_array_equal(group["1"][:], labels[:, ::2, ::2])  # stride keeps every other voxel
    assert group["0"].metadata.to_dict()["codecs"][0]["configuration"]["codecs"][1] == \
        {"name": "zstd", "configuration": {"level": 7, "checksum": False}}
    assert not list((data_dir / "images" / "d" / "em.ome.zarr" / "labels").glob(".*partial*"))
    assert (data_dir / "images" / "d" / "em.ome.zarr" / "labels" / "seg" / "meshes" / "info").exists()


def test_label_meshes_cli_and_what_labels_must_be(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    image = np.random.default_rng(4).integers(0, 255, size=(24, 96, 80), dtype=np.uint8)
    labels = np.zeros(image.shape, dtype=np.uint32)
    labels[4:20, 10:60, 10:50], labels[6:18, 60:90, 20:70] = 7, 9
    tifffile.imwrite(tmp_path / "em.tif", image)
    tifffile.imwrite(tmp_path / "seg.tif", labels)
    tifffile.imwrite(tmp_path / "float.tif", labels.astype(np.float32))
    tifffile.imwrite(tmp_path / "coarse.tif", labels.astype(np.uint16), imagej=True, resolution=(1 / 0.02, 1 / 0.02),
                     metadata={"spacing": 0.02, "unit": "um"})
    lamella("import", str(tmp_path / "em.tif"), "--dataset", "d", "--voxel-size", "10,10,10", "--quiet",
            "--data-dir", str(data_dir), check=True)
    labels_dir = data_dir / "images" / "d" / "em.ome.zarr" / "labels"
    assert_one_line_error(lamella("import", str(tmp_path / "float.tif"), "--dataset", "d", "--labels", "em",
                                  "--data-dir", str(data_dir)), "integers", "float32")
    assert_one_line_error(lamella("import", str(tmp_path / "coarse.tif"), "--dataset", "d", "--labels", "em",
                                  "--data-dir", str(data_dir)), "20.0", "10.0")
    assert not labels_dir.exists() or not any(labels_dir.iterdir())  # nothing half-written
    lamella("import", str(tmp_path / "seg.tif"), "--dataset", "d", "--labels", "em", "--no-meshes", "--quiet",
            "--data-dir", str(data_dir), check=True)
    assert not (labels_dir / "seg" / "meshes").exists()
    assert_one_line_error(lamella("mesh", "d", "em", "--data-dir", str(data_dir)), "not a segmentation")
    assert_one_line_error(lamella("mesh", "d", "nope", "--data-dir", str(data_dir)), "nope")
    built = lamella("mesh", "d", "seg", "--workers", "2", "--quiet", "--data-dir", str(data_dir), check=True)
    assert "2 segments" in built.stdout
    info = json.loads((labels_dir / "seg" / "meshes" / "info").read_text())
    assert info["@type"] == "neuroglancer_multilod_draco"


def test_import_on_local_dask_cluster(tmp_path: Path) -> None:
    volume = np.random.default_rng(5).integers(0, 255, size=(70, 140, 130), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", volume)
    for name, extra in (("single", []), ("cluster", ["--workers", "2"])):
        lamella("import", str(tmp_path / "stack.tif"), "--dataset", "d", "--name", name, "--quiet", *extra,
                "--data-dir", str(tmp_path / "data"), check=True)
    images = tmp_path / "data" / "images" / "d"
    single, cluster = zarr.open_group(images / "single.ome.zarr"), zarr.open_group(images / "cluster.ome.zarr")
    assert len(list(single.array_keys())) == len(list(cluster.array_keys())) > 1
    for key in single.array_keys():
        np.testing.assert_array_equal(single[key][:], cluster[key][:])
    np.testing.assert_array_equal(cluster["0"][:], volume)


def test_import_rescaled_montage_and_units(tmp_path: Path) -> None:
    """The SerialEM montage (int16, 2D, legacy header) kept as int16, and rescaled to uint8 for JPEG."""
    montage = shared_file(SHARED_DATA / "mrc_serialem_grid_montage_mobie" / "julian-test.mrc")
    data_dir = tmp_path / "data"
    kept = lamella("import", str(montage), "--dataset", "grid", "--name", "raw", "--quiet",
                   "--data-dir", str(data_dir), check=True)
    assert "warning" in kept.stderr  # the header statistics are off: said, not fatal
    lamella("import", str(montage), "--dataset", "grid", "--name", "jpeg", "--to-uint8", "--quiet",
            "--data-dir", str(data_dir), check=True)
    with mrcfile.open(montage, permissive=True) as mrc:
        source = np.asarray(mrc.data)
    images = data_dir / "images" / "grid"
    raw = zarr.open_group(images / "raw.ome.zarr", mode="r")
    np.testing.assert_array_equal(raw["0"][:], source.reshape(raw["0"].shape))
    scale = raw.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert abs(scale[-1] - 1788.8) < 1
    rescaled = zarr.open_group(images / "jpeg.ome.zarr", mode="r")["0"][:]
    assert rescaled.dtype == np.uint8 and rescaled.min() == 0 and rescaled.max() == 255
    low, high = np.percentile(source, [0.5, 99.5])
    expected = np.clip(np.rint((source.astype(np.float32) - low) * (255 / (high - low))), 0, 255)
    assert np.abs(rescaled.reshape(source.shape).astype(int) - expected).max() <= 1
    tifffile.imwrite(tmp_path / "um.tif", np.ones((4, 32, 32), np.uint8), photometric="minisblack")
    lamella("import", str(tmp_path / "um.tif"), "--dataset", "grid", "--voxel-size", "0.05,0.01,0.01", "--unit", "um",
            "--quiet", "--data-dir", str(data_dir), check=True)
    um = zarr.open_group(images / "um.ome.zarr", mode="r")
    assert um.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [50, 10, 10]


# ``lamella`` in a process that reports its peak RSS (VmHWM: since exec, unlike ru_maxrss of a child
# spawned from this large test process, which starts at this process's size).
PEAK_RSS = """import atexit, pathlib, re, runpy, sys
atexit.register(lambda: print(re.search(r"VmHWM:\\s+(\\d+) kB", pathlib.Path("/proc/self/status").read_text())[1],
                              file=sys.stderr))
sys.argv = ["lamella", *sys.argv[1:]]
runpy.run_module("viewer.cli", run_name="__main__")
"""


def peak_rss_mib(*args: str) -> float:
    """Run ``lamella ARGS`` and return the peak resident memory of that process."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.split()[-1]) / 1024


def test_large_2d_tiff_montage_streamed_through_vips(tmp_path: Path) -> None:
    """A 20000 x 12000 uint16 tiled deflate BigTIFF is read by region through libvips, never whole."""
    import pyvips

    from tiling.sources import VipsImageSource, open_source

    height, width = 12000, 20000
    xyz = pyvips.Image.xyz(width, height)
    ((xyz[0] * 31 + xyz[1] * 17) % 65536).cast("ushort").tiffsave(
        str(tmp_path / "montage.tif"), tile=True, tile_width=512, tile_height=512, compression="deflate",
        bigtiff=True)

    def expected(y: slice, x: slice) -> np.ndarray:
        rows, cols = np.mgrid[y, x]
        return ((cols * 31 + rows * 17) % 65536).astype(np.uint16)

    with open_source(str(tmp_path / "montage.tif")) as source:  # type: ignore[attr-defined]
        assert isinstance(source, VipsImageSource) and source.shape == (height, width)
    tifffile.imwrite(tmp_path / "small.tif", expected(slice(0, 1200), slice(0, 2000)), tile=(256, 256),
                     compression="zlib")
    data_dir = str(tmp_path / "data")
    baseline = peak_rss_mib("import", str(tmp_path / "small.tif"), "--dataset", "m", "--quiet", "--data-dir", data_dir)
    peak = peak_rss_mib("import", str(tmp_path / "montage.tif"), "--dataset", "m", "--quiet", "--data-dir", data_dir)
    image_mib = height * width * 2 / (1 << 20)
    assert peak - baseline < image_mib / 2, (baseline, peak, image_mib)  # 458 MiB image: about 110 MiB more
    level0 = zarr.open_group(tmp_path / "data" / "images" / "m" / "montage.ome.zarr", mode="r")["0"]
    assert level0.shape == (height, width) and level0.dtype == np.uint16
    rng = np.random.default_rng(9)
    corners = [(0, 0), (height - 700, width - 900)] + [(int(rng.integers(0, height - 700)),
                                                         int(rng.integers(0, width - 900))) for _ in range(6)]
    for y0, x0 in corners:  # odd sizes, across tile and shard edges
        region = (slice(y0, y0 + 700), slice(x0, x0 + 900))
        np.testing.assert_array_equal(level0[region], expected(*region))


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("LAMELLA_PORT", "abc", ("LAMELLA_PORT", "integer")),
    ("LAMELLA_CHUNK_CACHE_MB", "1e3", ("LAMELLA_CHUNK_CACHE_MB",)),
    ("LAMELLA_HEADER_TIMEOUT_SECONDS", "-1", ("header_timeout_seconds",)),
    ("LAMELLA_BODY_TIMEOUT_SECONDS", "nan", ("body_timeout_seconds",)),
    ("LAMELLA_STATE_POLL_SECONDS", "0", ("state_poll_seconds",)),
    ("LAMELLA_TRUSTED_PROXIES", "127.0.0.1,nginx.local", ("trusted_proxies", "nginx.local")),
])
def test_bad_settings_are_one_line_errors(tmp_path: Path, variable: str, value: str, words: tuple[str, ...]) -> None:
    result = subprocess.run([*LAMELLA, "serve", "--data-dir", str(tmp_path), "--port", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ, variable: value})
    assert_one_line_error(result, *words)
    assert not (tmp_path / "lamella.sqlite").exists()


def test_bad_port_option_is_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(lamella("serve", "--data-dir", str(tmp_path), "--port", "70000"), "port")


class _Stalling(http.server.SimpleHTTPRequestHandler):
    """Serves a store's files, except that every request for a path with ``stall`` in it, and every
    chunk key (Zarr v3 ``c/…``) when ``stall_chunks`` is set, gets no answer at all."""

    stall_chunks = False
    release = threading.Event()

    def do_GET(self) -> None:
        if "stall" in self.path or (self.stall_chunks and "/c/" in self.path):
            self.release.wait(120)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_remote(data_dir: tuple[Path, object]) -> Iterator[tuple[str, type[_Stalling]]]:
    store = Path(next(p for p in (data_dir[0] / "images").rglob("*.ome.zarr")))
    handler = type("Handler", (_Stalling,), {"release": threading.Event()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(handler, directory=str(store.parent)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{store.name}", handler
    handler.release.set()
    httpd.shutdown()


def test_a_stalled_remote_store_fails_in_bounded_time(tmp_path: Path, stalling_remote: tuple[str, type]) -> None:
    url, handler = stalling_remote
    env = {**os.environ, "LAMELLA_REMOTE_STALL_SECONDS": "1"}
    started = time.monotonic()
    result = subprocess.run([*LAMELLA, "add", url + "/stall", "--dataset", "r", "--data-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert_one_line_error(result)
    assert time.monotonic() - started < 60  # the stalled server holds each request for 120 s

    lamella("add", url, "--dataset", "r", "--name", "img", "--data-dir", str(tmp_path), check=True)
    handler.stall_chunks = True
    served = start_server(tmp_path, env={"LAMELLA_REMOTE_STALL_SECONDS": "1"})
    try:
        info = served.get("/api/datasets/r/images/img/precomputed/info").json()
        size = info["scales"][0]["chunk_sizes"][0]
        chunk = "/api/datasets/r/images/img/precomputed/{}/0-{}_0-{}_0-{}".format(info["scales"][0]["key"], *size)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            stalled = pool.submit(served.get, chunk, timeout=90)  # tensorstore's retries, each stalled for 1 s
            time.sleep(0.5)
            assert served.get("/api/datasets").status_code == 200  # others are served meanwhile
            answer = stalled.result(60)
        assert answer.status_code == 503 and answer.json()["code"] == "store_unreadable", answer.text
        assert time.monotonic() - started < 60  # the stalled server holds each request for 120 s
    finally:
        stop_server(served)
