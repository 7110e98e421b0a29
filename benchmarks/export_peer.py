"""A layer's static precomputed export against Neuroglancer's own writer for the same annotations.

Run as ``python benchmarks/export_peer.py --points 1000000 [--database-url URL] [--work DIR]``. Makes (or
reuses, in ``--work``) a SQLite database with a point layer of that many random points, each with a float32
property and, for a third of them, a label; then times

* Lamella: ``annotations.annotation_export.export_layer(..., "precomputed-tar")`` written to a file (a
  multi-level spatial index, sharded ``by_id``), in this process, as the HTTP route runs it;
* peer: ``neuroglancer.write_annotations.AnnotationWriter`` fed the same points (read from the database
  beforehand, not timed) and written to a folder (one spatial cell, one ``by_id`` file per annotation).

Prints seconds, bytes and files of each, and each one's peak Python allocation (tracemalloc is not used:
it would slow both). Timing only; correctness is tests/test_annotation_exchange.py's.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BOUNDS = [100_000.0, 100_000.0, 50_000.0]


def make_layer(url: str, points: int) -> None:
    from annotations.access import Access
    from annotations.accounts import Accounts
    from annotations.annotation_store import AnnotationStore, LayerIn
    from annotations.catalog import Catalog, ImageSpec
    from annotations.db import make_engine, make_sessions, migrate
    from annotations.layer_specs import AnnotationIn

    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessions(engine)
    Catalog(sessions).register("bench", ImageSpec(name="em", uri="/nowhere", ome_version="0.5", zarr_format=3,
                                                  dtype="uint8", shape=[50, 100, 100], voxel_size_nm=[1000] * 3,
                                                  levels=[{"path": "0"}], window=[0, 255]))
    Accounts(sessions).create("bench", "admin")
    actor = Accounts(sessions).get("bench").actor("token")
    access = Access(sessions).dataset_access(actor, "bench")
    store = AnnotationStore(sessions)
    layer = store.create_layer(actor, access, LayerIn.model_validate({
        "name": "points", "types": ["point"], "labels": [{"id": "synapse"}],
        "properties": [{"id": "confidence", "type": "float32"}], "lower_bound": [0, 0, 0], "upper_bound": BOUNDS}))
    xyz = (np.random.default_rng(1).uniform(0, 1, (points, 3)) * BOUNDS).tolist()
    for start in range(0, points, 100_000):
        batch = enumerate(xyz[start:start + 100_000], start)
        store.create_many(actor, access, layer.id, [
            AnnotationIn(type="point", point=p, label="synapse" if n % 3 == 0 else None,
                         properties={"confidence": n / points}) for n, p in batch])
    engine.dispose()


def lamella(url: str, target: Path) -> tuple[float, int]:
    from annotations.access import Access, Actor
    from annotations.annotation_export import export_layer
    from annotations.db import make_engine, make_sessions

    sessions = make_sessions(make_engine(url))
    operator = Actor(name="bench", role="admin")
    access = Access(sessions).dataset_access(operator, "bench")
    started = time.perf_counter()
    size = 0
    with export_layer(sessions, operator, access, 1, "precomputed-tar") as chunks, target.open("wb") as file:
        for chunk in chunks:
            file.write(chunk)
            size += len(chunk)
    return time.perf_counter() - started, size


def peer(url: str, folder: Path) -> tuple[float, int, int]:
    import orjson
    from neuroglancer import coordinate_space, viewer_state
    from neuroglancer.write_annotations import AnnotationWriter
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT annotation_id, geometry, label, properties FROM annotation_versions "
                                       "WHERE valid_to IS NULL ORDER BY annotation_id")).all()
    points = [(i, orjson.loads(g), label, orjson.loads(p)["confidence"]) for i, g, label, p in rows]
    del rows
    started = time.perf_counter()
    writer = AnnotationWriter(
        coordinate_space=coordinate_space.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[1, 1, 1]),
        annotation_type="point",
        properties=[viewer_state.AnnotationPropertySpec(id="confidence", type="float32"),
                    viewer_state.AnnotationPropertySpec(id="label", type="uint8", enum_values=[1],
                                                        enum_labels=["synapse"])])
    for annotation_id, point, label, confidence in points:
        writer.add_point(point, id=annotation_id, confidence=confidence, label=1 if label else 0)
    writer.write(folder)
    elapsed = time.perf_counter() - started
    files = [p for p in folder.rglob("*") if p.is_file()]
    return elapsed, sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=None, help="Folder kept between runs (the database).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="export-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    database = work / f"points-{args.points}.sqlite"
    url = f"sqlite:///{database}"
    if not database.exists():
        started = time.perf_counter()
        make_layer(url, args.points)
        print(f"made {args.points} points in {time.perf_counter() - started:.0f} s")
    seconds, size = lamella(url, work / "export.tar")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lamella export_layer precomputed-tar: {seconds:.1f} s, {size / 2**20:.1f} MiB in one archive "
          f"(process peak RSS so far {peak:.0f} MiB)")
    folder = work / "peer"
    shutil.rmtree(folder, ignore_errors=True)
    seconds, size, files = peer(url, folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"neuroglancer AnnotationWriter: {seconds:.1f} s, {size / 2**20:.1f} MiB in {files} files "
          f"(process peak RSS {peak:.0f} MiB)")
    shutil.rmtree(folder, ignore_errors=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
