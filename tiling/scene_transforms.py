"""Mapping points through an OME-Zarr 0.6 scene: its coordinate systems are nodes, its transforms edges.

The reader half of ``tiling.scenes`` and the core of ``lamella scene-map`` (the "dingus" of the
published transformation conformance cases). It follows the 0.6 specification ("coordinateTransformations"
metadata, "scene" metadata): points are rows in the axis order of their coordinate system; an affine is
the top M x (N+1) block of a homogeneous matrix acting on column vectors; a path through the graph may
use an edge backwards only when its transform has a closed-form inverse (or is a ``bijection``).
``input``/``output`` are read in both forms (objects ``{"name", "path"}`` and the older strings), as is
``byDimension``'s older ``input_axes``/``output_axes`` form with the transform inline.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiling.errors import InvalidTransform

Points = np.ndarray  # (n, d) float64
Mapping = Callable[[Points], Points]
# A coordinate system: (the group it is defined in, relative to the scene root; "" for the scene itself, its name).
# An array's own index space is (array path, "").
Node = tuple[str, str]


class SceneProblem(InvalidTransform):
    """A scene that cannot be read, or a mapping it does not define (unknown system, no path, no inverse)."""


def read_attributes(folder: Path) -> dict[str, Any]:
    """The ``attributes`` of the Zarr v3 group or array at ``folder`` (its zarr.json)."""
    try:
        document = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneProblem(f"no Zarr v3 group at {folder} (no zarr.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SceneProblem(f"{folder / 'zarr.json'} cannot be read as JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("attributes", {}), dict):
        raise SceneProblem(f"{folder / 'zarr.json'} is not a Zarr v3 metadata document")
    return document.get("attributes", {})


def _reference(value: Any, default_path: str) -> Node:
    """An ``input``/``output``: ``{"name", "path"}`` (path relative to the document's group) or a bare name."""
    if isinstance(value, str):
        return (default_path, value)
    if isinstance(value, dict):
        path = value.get("path")
        name = value.get("name")
        joined = "/".join(part for part in (default_path, str(path).strip("/")) if part) if path else default_path
        return (joined, "" if name is None else str(name))
    raise SceneProblem(f"a transform's input or output must be an object or a name, not {value!r}")


def _numbers(value: Any, what: str, ndim: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneProblem(f"the {what} must be numbers") from None
    if array.ndim != ndim or not np.all(np.isfinite(array)):
        raise SceneProblem(f"the {what} must be a {'matrix' if ndim == 2 else 'list'} of finite numbers")
    return array


@dataclass
class Fields:
    """Opens the vector fields (``displacements``, ``coordinates``) a scene refers to, relative to its root."""

    root: Path
    cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def field(self, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors (d, *space), scale, translation) of the first level of the multiscale field at ``path``."""
        if path not in self.cache:
            self.cache[path] = self._open(path)
        return self.cache[path]

    def _open(self, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import zarr  # only for scenes with fields

        folder = self.root / path
        ome = read_attributes(folder).get("ome", {})
        try:
            multiscale = ome["multiscales"][0]
            system = multiscale["coordinateSystems"][0]
            dataset = multiscale["datasets"][0]
            axes = system["axes"]
        except (KeyError, IndexError, TypeError):
            raise SceneProblem(f"the field at {path!r} is not an OME-Zarr 0.6 multiscale group") from None
        vector_axis = next((i for i, axis in enumerate(axes) if axis.get("type") in ("displacement", "coordinate")),
                           None)
        if vector_axis is None:
            raise SceneProblem(f"the field at {path!r} has no axis of type displacement or coordinate")
        rank = len(axes)
        scale, translation = np.ones(rank), np.zeros(rank)
        for transform in _flatten(dataset.get("coordinateTransformations", [])):
            kind = transform.get("type")
            if kind == "scale":
                values = _numbers(transform.get("scale"), "field scale", 1)
                scale, translation = scale * values, translation * values
            elif kind == "translation":
                translation = translation + _numbers(transform.get("translation"), "field translation", 1)
            elif kind != "identity":
                raise SceneProblem(f"the field at {path!r} has a level transform of type {kind!r}")
        try:
            vectors = np.asarray(zarr.open_array(str(folder / dataset["path"]), mode="r")[...], dtype=np.float64)
        except (OSError, ValueError, KeyError) as error:
            raise SceneProblem(f"the field at {path!r} cannot be read: {error}") from None
        if vectors.ndim != rank:
            raise SceneProblem(f"the field at {path!r} has {vectors.ndim} dimensions but {rank} axes")
        keep = [i for i in range(rank) if i != vector_axis]
        return np.moveaxis(vectors, vector_axis, 0), scale[keep], translation[keep]


def _flatten(transforms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat: list[dict[str, Any]] = []
    for transform in transforms:
        if isinstance(transform, dict) and transform.get("type") == "sequence":
            flat.extend(_flatten(transform.get("transformations", [])))
        elif isinstance(transform, dict):
            flat.append(transform)
    return flat


def _field_mapping(fields: Fields, transform: dict[str, Any], absolute: bool) -> Mapping:
    path = transform.get("path")
    if not isinstance(path, str):
        raise SceneProblem(f"a {transform.get('type')} transform needs the path of its field")
    order = {"nearest": 0, "linear": 1, "cubic": 3, "bspline-cubic": 3}.get(transform.get("interpolation", "linear"), 1)

    def apply(points: Points) -> Points:
        from scipy import ndimage  # only for scenes with fields: it costs start-up time

        vectors, scale, translation = fields.field(path)
        if points.shape[1] != vectors.ndim - 1:
            raise SceneProblem(f"the field at {path!r} is {vectors.ndim - 1}D; the points are {points.shape[1]}D")
        # Input point -> the field's array coordinates (the inverse of its level transform); vectors
        # beyond the sampled extent are those of the nearest edge sample.
        index = ((points - translation) / scale).T
        sampled = np.stack([ndimage.map_coordinates(component, index, order=order, mode="nearest")
                            for component in vectors], axis=1)
        return sampled if absolute else points + sampled

    return apply


def _chained(steps: list[Mapping]) -> Mapping:
    """The mapping that applies ``steps`` in order."""

    def run(points: Points) -> Points:
        for step in steps:
            points = step(points)
        return points

    return run


def mapping(transform: dict[str, Any], fields: Fields, *, inverse: bool = False,
            output_rank: int | None = None) -> Mapping:
    """The function of points one transform (or, with ``inverse``, its inverse) stands for.

    Raises:
        SceneProblem: an unknown type, malformed parameters, or an inverse with no closed form.
    """
    if not isinstance(transform, dict):
        raise SceneProblem(f"a transform must be an object, not {transform!r}")
    kind = transform.get("type")
    if kind == "identity":
        return lambda points: points
    if kind in ("scale", "translation"):
        values = _parameters(transform, kind, fields, 1)
        if kind == "scale":
            if np.any(values == 0):
                raise SceneProblem("a scale of 0 has no inverse")
            factors = 1 / values if inverse else values
            return lambda points: _check_rank(points, len(factors)) * factors
        shift = -values if inverse else values
        return lambda points: _check_rank(points, len(shift)) + shift
    if kind in ("affine", "rotation"):
        matrix = _parameters(transform, kind, fields, 2)
        if kind == "rotation":
            matrix = np.hstack([matrix, np.zeros((len(matrix), 1))])
        rows, columns = matrix.shape
        if inverse:
            if rows != columns - 1:
                raise SceneProblem(f"a {rows}x{columns} affine maps between different dimensions: no inverse")
            homogeneous = np.vstack([matrix, np.eye(1, columns, columns - 1)])
            try:
                matrix = np.linalg.inv(homogeneous)[:-1]
            except np.linalg.LinAlgError:
                raise SceneProblem("the affine is singular: it has no inverse") from None
        return lambda points: _check_rank(points, matrix.shape[1] - 1) @ matrix[:, :-1].T + matrix[:, -1]
    if kind == "mapAxis":
        order = [int(i) for i in transform.get("mapAxis", [])]
        if sorted(order) != list(range(len(order))):
            raise SceneProblem(f"mapAxis must be a permutation of the axes, not {order}")
        used = list(np.argsort(order)) if inverse else order
        return lambda points: _check_rank(points, len(used))[:, used]
    if kind == "sequence":
        steps = [mapping(step, fields, inverse=inverse) for step in transform.get("transformations", [])]
        if inverse:
            steps.reverse()
        return _chained(steps)
    if kind == "bijection":
        chosen = transform.get("inverse" if inverse else "forward")
        if chosen is None:
            raise SceneProblem("a bijection needs both forward and inverse")
        return mapping(chosen, fields)
    if kind == "byDimension":
        return _by_dimension(transform, fields, inverse, output_rank)
    if kind in ("displacements", "coordinates"):
        if inverse:
            raise SceneProblem(f"a {kind} field has no closed-form inverse (store a bijection)")
        return _field_mapping(fields, transform, absolute=kind == "coordinates")
    raise SceneProblem(f"unsupported transform type {kind!r}")


def _check_rank(points: Points, rank: int) -> Points:
    if points.shape[1] != rank:
        raise SceneProblem(f"points have {points.shape[1]} coordinates; the transform expects {rank}")
    return points


def _parameters(transform: dict[str, Any], kind: str, fields: Fields, ndim: int) -> np.ndarray:
    if kind in transform:
        return _numbers(transform[kind], kind, ndim)
    if isinstance(transform.get("path"), str):
        import zarr

        try:
            return _numbers(zarr.open_array(str(fields.root / transform["path"]), mode="r")[...], kind, ndim)
        except (OSError, ValueError, KeyError) as error:
            raise SceneProblem(f"the {kind} parameters at {transform['path']!r} cannot be read: {error}") from None
    raise SceneProblem(f"a {kind} transform without its parameters")


def _by_dimension(transform: dict[str, Any], fields: Fields, inverse: bool, output_rank: int | None) -> Mapping:
    parts = []
    for item in transform.get("transformations", []):
        inner = item.get("transformation", item) if isinstance(item, dict) else item
        ins = item.get("inputAxes", item.get("input_axes")) if isinstance(item, dict) else None
        outs = item.get("outputAxes", item.get("output_axes")) if isinstance(item, dict) else None
        if ins is None or outs is None:
            raise SceneProblem("each part of a byDimension names its inputAxes and outputAxes")
        ins, outs = [int(i) for i in ins], [int(i) for i in outs]
        if inverse:
            ins, outs = outs, ins
        parts.append((mapping(inner, fields, inverse=inverse), ins, outs))
    rank = output_rank if output_rank is not None else max((max(outs) + 1 for _, _, outs in parts), default=0)

    def apply(points: Points) -> Points:
        out = np.full((len(points), rank), np.nan)
        for function, ins, outs in parts:
            out[:, outs] = function(points[:, ins])
        if np.isnan(out).any():
            raise SceneProblem("the byDimension leaves an output axis undefined")
        return out

    return apply


@dataclass(frozen=True)
class Edge:
    source: Node
    target: Node
    transform: dict[str, Any]


@dataclass
class Scene:
    """A scene's coordinate systems (with their axes) and edges, read from its folder and its images."""

    root: Path
    systems: dict[Node, list[dict[str, Any]]]
    edges: list[Edge]
    images: dict[str, str]  # image path -> its intrinsic coordinate system's name

    @classmethod
    def open(cls, root: Path) -> Scene:
        """Read ``root/zarr.json`` (its ``ome.scene``) and the metadata of every group its transforms name.

        Raises:
            SceneProblem: no scene there, or metadata that is not a scene.
        """
        ome = read_attributes(root).get("ome")
        scene = ome.get("scene") if isinstance(ome, dict) else None
        if not isinstance(scene, dict) or not isinstance(scene.get("coordinateTransformations"), list):
            raise SceneProblem(f"{root} holds no OME-Zarr scene (ome.scene.coordinateTransformations)")
        systems: dict[Node, list[dict[str, Any]]] = {}
        for system in scene.get("coordinateSystems", []) or []:
            systems[("", str(system.get("name")))] = list(system.get("axes", []))
        edges = [Edge(_reference(t.get("input"), ""), _reference(t.get("output"), ""), t)
                 for t in scene["coordinateTransformations"] if isinstance(t, dict)]
        result = cls(root, systems, edges, {})
        for path in sorted({node[0] for edge in edges for node in (edge.source, edge.target) if node[0]}):
            result._add_image(path)
        return result

    def _add_image(self, path: str) -> None:
        """The multiscale group at ``path``: its coordinate systems, level transforms and image-level transforms."""
        folder = self.root / path
        if not (folder / "zarr.json").is_file():
            return  # named by a transform but absent: any path through it fails with "unknown"
        ome = read_attributes(folder).get("ome")
        multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
        if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
            return
        multiscale = multiscales[0]
        for system in multiscale.get("coordinateSystems", []) or []:
            self.systems[(path, str(system.get("name")))] = list(system.get("axes", []))
        for dataset in multiscale.get("datasets", []) or []:
            for transform in dataset.get("coordinateTransformations", []) or []:
                level = "/".join(part for part in (path, str(dataset.get("path", "")).strip("/")) if part)
                self.edges.append(Edge((level, ""), _reference(transform.get("output"), path), transform))
                self.images.setdefault(path, _reference(transform.get("output"), path)[1])
        for transform in multiscale.get("coordinateTransformations", []) or []:
            self.edges.append(Edge(_reference(transform.get("input"), path), _reference(transform.get("output"), path),
                                   transform))

    def node(self, spelling: str) -> Node:
        """A coordinate system named on the command line: a scene system's name, an image's path (its intrinsic
        system), ``IMAGE:NAME``, or a level's path (``IMAGE/0``: voxel indices).

        Raises:
            SceneProblem: nothing in the scene has that name.
        """
        if ("", spelling) in self.systems:
            return ("", spelling)
        if spelling in self.images:
            return (spelling, self.images[spelling])
        if ":" in spelling:
            path, name = spelling.rsplit(":", 1)
            if (path, name) in self.systems:
                return (path, name)
        if any(edge.source == (spelling, "") for edge in self.edges):
            return (spelling, "")
        raise SceneProblem(f"the scene has no coordinate system {spelling!r}")

    def rank(self, node: Node) -> int | None:
        axes = self.systems.get(node)
        return len(axes) if axes is not None else None

    def route(self, source: Node, target: Node) -> Mapping:
        """The composed mapping along the shortest usable path from ``source`` to ``target``.

        Raises:
            SceneProblem: no path (or only through transforms without an inverse).
        """
        fields = Fields(self.root)
        steps: dict[Node, tuple[Node, Edge, bool] | None] = {source: None}
        queue = deque([source])
        while queue and target not in steps:
            here = queue.popleft()
            for edge in self.edges:
                for start, end, backwards in ((edge.source, edge.target, False), (edge.target, edge.source, True)):
                    if start != here or end in steps:
                        continue
                    if backwards and not invertible(edge.transform):
                        continue
                    steps[end] = (here, edge, backwards)
                    queue.append(end)
        if target not in steps:
            raise SceneProblem(f"no chain of transforms leads from {_spelled(source)} to {_spelled(target)}")
        chain: list[Mapping] = []
        node = target
        while (step := steps[node]) is not None:
            previous, edge, backwards = step
            chain.append(mapping(edge.transform, fields, inverse=backwards, output_rank=self.rank(node)))
            node = previous
        chain.reverse()
        return _chained(chain)

    def map_points(self, source: str, target: str, points: object) -> np.ndarray:
        """``points`` (rows in ``source``'s axis order) mapped into ``target``.

        Raises:
            SceneProblem: an unknown system, no path, or points of the wrong dimension.
        """
        start, end = self.node(source), self.node(target)
        array = _numbers(points, "coordinates", 2) if np.size(points) else np.zeros((0, self.rank(start) or 0))
        rank = self.rank(start)
        if rank is not None and array.shape[1] != rank:
            raise SceneProblem(f"{source!r} has {rank} axes; the points have {array.shape[1]} coordinates")
        result = self.route(start, end)(array)
        if not np.all(np.isfinite(result)):
            raise SceneProblem("the mapping gives non-finite coordinates")
        return result


def invertible(transform: dict[str, Any]) -> bool:
    """Whether a transform has an inverse Lamella can apply (closed form, or given, as in a bijection)."""
    kind = transform.get("type") if isinstance(transform, dict) else None
    if kind in ("identity", "scale", "translation", "rotation", "mapAxis", "bijection"):
        return True
    if kind == "affine":
        matrix = transform.get("affine")
        return matrix is None or (len(matrix) > 0 and len(matrix) == len(matrix[0]) - 1)
    if kind == "sequence":
        return all(invertible(step) for step in transform.get("transformations", []))
    if kind == "byDimension":
        return all(invertible(item.get("transformation", item)) for item in transform.get("transformations", []))
    return False


def _spelled(node: Node) -> str:
    path, name = node
    return f"{path}:{name}" if path and name else (path or repr(name))
