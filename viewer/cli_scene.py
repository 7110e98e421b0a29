"""``lamella export-scene`` and ``lamella scene-map``: a dataset as an OME-Zarr 0.6 scene, and points through one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from viewer.cli_base import fail, open_sessions, with_common
from viewer.config import Settings


@click.command("export-scene")
@with_common
@click.argument("dataset")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--link", is_flag=True,
              help="Hard-link the stored chunks instead of copying them (same file system only; the scene then "
                   "shares its files with the data directory: never write into it).")
def export_scene(dataset: str, dest: Path, link: bool, **options: Any) -> None:
    """Write DATASET as an OME-Zarr 0.6 scene in the new folder DEST.

    Every image becomes a group of DEST with its own metadata at 0.6 and its stored chunks as they are
    (copied, or hard-linked with --link); the scene's first coordinate system is the reference space, in nanometres,
    and each image has one transform into it (an affine, or a thin-plate spline sampled to a pair of
    displacement fields). DEST must not exist or be an empty folder; nothing is left behind on failure.
    """
    from annotations.catalog import Catalog
    from annotations.transforms import Transforms
    from tiling.scenes import write_scene
    from viewer.correlation import Correlation
    from viewer.scene_export import plan_dataset_scene

    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        fail(f"{dest} exists and is not an empty folder")
    sessions = open_sessions(Settings.from_env(**options))
    record, files = plan_dataset_scene(Correlation(Catalog(sessions), Transforms(sessions)), dataset)
    write_scene(files, dest, link=link)
    click.echo(f"wrote the scene of {record.name!r} ({len(record.images)} images) to {dest}")


def parse_points(texts: tuple[str, ...]) -> list[list[float]]:
    """Points given as one JSON list of lists, or as comma-separated numbers each."""
    if len(texts) == 1 and texts[0].lstrip().startswith("["):
        try:
            points = json.loads(texts[0])
        except ValueError:
            raise click.BadParameter("expected a JSON list of points such as [[1, 2, 3]]") from None
        if not isinstance(points, list) or not all(isinstance(point, list) for point in points):
            raise click.BadParameter("expected a JSON list of points such as [[1, 2, 3]]")
        return points
    try:
        return [[float(value) for value in text.split(",")] for text in texts]
    except ValueError:
        raise click.BadParameter("expected points such as 10,20,30 (in the source system's axis order)") from None


@click.command("scene-map", context_settings={"ignore_unknown_options": True})  # points such as -5,3,2
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("source")
@click.argument("target")
@click.argument("coordinates", nargs=-1, required=True)
def scene_map(path: Path, source: str, target: str, coordinates: tuple[str, ...]) -> None:
    """Map points from SOURCE to TARGET through the OME-Zarr scene at PATH; prints {"coordinates": [...]}.

    SOURCE and TARGET name coordinate systems: one of the scene's (``reference`` in Lamella's scenes), an
    image's path (its intrinsic system), ``IMAGE:NAME``, or a level's path such as ``em/0`` (voxel indices).
    COORDINATES are in the source system's axis order (z,y,x in Lamella's scenes): ``1,2,3 4,5,6`` or
    ``'[[1,2,3],[4,5,6]]'``. The last four arguments are those of the OME-Zarr transformation conformance
    "dingus".
    """
    from tiling.scene_transforms import Scene, SceneProblem

    points = parse_points(coordinates)
    try:
        mapped = Scene.open(path).map_points(source, target, points)
    except SceneProblem as error:
        fail(str(error))
    click.echo(json.dumps({"coordinates": mapped.tolist()}))


COMMANDS = [export_scene, scene_map]
