"""Reading and writing the transform and landmark files of CLEM registration tools.

Conventions (the same in every parser and writer here):

- A transform maps the MOVING image's physical coordinates to the REFERENCE image's physical coordinates.
- Matrices are homogeneous 4x4 float64 arrays in x, y, z order, acting on column vectors:
  ``p_ref = M @ [x, y, z, 1]``. 3x4 is the top of a 4x4. 2D inputs (3x3 homogeneous, last row 0 0 1, or 2x3)
  are lifted to 3D with z mapped identically: the z row and column are those of the identity, no z translation.
- Landmarks are paired points, (n, 3) float64 arrays in x, y, z order; 2D points get z = 0. ``in_pixels`` says
  whether they are in index units of each image (True) or in physical units (False, ``unit`` if a file says).
- ``unit`` is a canonical name ("angstrom", "nanometer", "micrometer", "millimeter", "meter") or None when the
  file does not say. The one exception is "pixel": an eC-CLEM v1 2D matrix maps pixel indices to pixel indices.
- ``dimensions`` is 2 when the inputs were 2D, else 3.

Nothing here fits, inverts or judges transforms (singularity is checked where they are used); parsers only
reject what cannot be read: malformed text, wrong shapes, non-numbers, non-finite values (NaN, infinities,
and literals such as 1e400 or 400-digit integers, which only a float's infinity holds), numbers beyond
±``MAX_COORDINATE_NM`` (no coordinate or matrix entry of a registration is that large, and the bound keeps
products finite; a composition that overflows all the same is refused as non-finite), a bad homogeneous
row, unpairable landmarks. Every such problem raises ``InvalidTransform`` with a one-line message naming
the line, row or element. XML with a DOCTYPE or ENTITY declaration is refused (eC-CLEM writes none), so the
standard library parser cannot be made to expand entities.

Formats (``ImportedTransform.format``):

- "matrix-json": a nested list of rows, or ``{"matrix": rows, "unit": "..."}`` (``matrix_json`` writes it).
- "matrix-csv": one row per line, separated by commas, semicolons or whitespace; ``#`` starts a comment and a
  ``# unit: micrometer`` comment states the unit. eC-CLEM's ``*.transformation.csv`` is such a file.
- "mobie": 12 numbers, the BigDataViewer/MoBIE row-packed 3x4 affine (``AffineTransform3D.getRowPackedCopy``:
  m00 m01 m02 m03 m10 ... m23), or a MoBIE view / views file / dataset.json with ``sourceTransforms``. MoBIE
  applies a view's source transforms in list order, each wrapping the previously transformed source
  (bdv ``TransformedSource``), so affines A1, A2, ... compose to ``An @ ... @ A1``. The affines of the first
  source named by the first affine are composed (following ``sourceNamesAfterTransform`` renames); other
  transform kinds (crop, grids, timepoints) are skipped and counted in the notes. Coordinates are physical in
  the source's unit, which the view does not state (usually micrometer): unit is None. Always 3D.
- "ec-clem": eC-CLEM (Icy plugin; github.com/anrcrocoval/ec-clem, v1 in github.com/PerrineGilloteaux/ec-clem).
  ``source`` is the image eC-CLEM transforms (moving), ``target`` the reference. Files have an Icy ``<root>``:
  v2 ``*.transformation.xml`` holds ``<MatrixTransformation m00=.. m33=..>`` (m00..m22 for 2D datasets) plus
  ``<transformation>`` with ``<sequenceSize>``; v2 ``*.transformation_schema.xml`` holds ``<transformation
  type= noiseModel= date=>`` with ``<dataset type="source|target" n= dimension= pointType="FIDUCIAL">`` of
  ``<point id=><coordinate dimension="0..2">value</coordinate>``. v2 points and matrices are in micrometres
  (ROI pixel positions times Icy pixel sizes). v1 ``*_transfo.xml`` holds ``<TargetSize>`` and one
  ``<MatrixTransformation order=..>`` per update, composed as ``Tn @ ... @ T1``; in 3D (``formerpixelsize*``
  attributes or ``TargetSize nz``) they are in micrometres, in 2D in pixels (unit "pixel"). v1
  ``*_NONRIGIDtransfo.xml`` holds ``<pointspairsinphysicalcoordinates xsource.. ztarget>`` in micrometres.
  A file is 2D when its matrix is 3x3, its datasets say dimension 2, its landmark z are constant in both sets
  (Icy puts 2D ROIs at z = 0) or both images have one z slice; a 4x4 matrix is then re-lifted from its x/y part.
- "bigwarp": BigWarp ``LandmarkTableModel.save`` CSV, no header, every cell quoted:
  ``"Pt-0","true",mx,my[,mz],fx,fy[,fz]`` (6 columns 2D, 8 columns 3D; moving then fixed = reference), in
  BigWarp's physical (world) coordinates, unit unstated. Rows flagged "false" are inactive and skipped;
  rows with an "Infinity" coordinate are unpaired (placed in one image only) and skipped.
- "point-lists": two 3DCT-style coordinate lists (tab/whitespace separated, optional header line, optional
  leading id column), in pixels. Lists with ids on both sides are paired by id, others by row order. The
  pairs are 2D when either list's Z is constant or absent (a max projection, or an SEM/FIB image with Z = 1):
  z is then set to 0 in both. At least 3 pairs are required.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from tiling.errors import InvalidTransform
from tiling.transforms import MAX_COORDINATE_NM, MIN_PAIRS, lift_2d

FORMATS = ("matrix-json", "matrix-csv", "mobie", "ec-clem", "bigwarp", "point-lists")
CONVENTION = "moving physical x,y,z -> reference physical x,y,z"
MIN_POINT_LIST_PAIRS = MIN_PAIRS["affine"][0]  # enough for a 2D affine
HOMOGENEOUS_TOLERANCE = 1e-9

_UNITS = {
    "angstrom": "angstrom", "angstroms": "angstrom", "å": "angstrom", "Å": "angstrom",
    "nm": "nanometer", "nanometer": "nanometer", "nanometers": "nanometer", "nanometre": "nanometer",
    "nanometres": "nanometer",
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micrometer": "micrometer",
    "micrometers": "micrometer", "micrometre": "micrometer", "micrometres": "micrometer", "micron": "micrometer",
    "microns": "micrometer",
    "mm": "millimeter", "millimeter": "millimeter", "millimeters": "millimeter", "millimetre": "millimeter",
    "millimetres": "millimeter",
    "m": "meter", "meter": "meter", "meters": "meter", "metre": "meter", "metres": "meter",
    "pixel": "pixel", "pixels": "pixel", "px": "pixel",
}  # fmt: skip
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")
_ID_HEADERS = {"id", "#", "no", "no.", "nr", "n", "name", "label", "index", "point", "pt", "bead"}
_UNIT_COMMENT = re.compile(r"#\s*unit\s*[:=]\s*(\S+)", re.IGNORECASE)
_MATRIX_ATTRIBUTE = re.compile(r"m([0-3])([0-3])")
_MOBIE_NAME = re.compile(r"[^,;/\\\s]+")
_V1_PAIR_ATTRIBUTES = ("xsource", "ysource", "zsource", "xtarget", "ytarget", "ztarget")


@dataclass(frozen=True, eq=False)
class LandmarkPairs:
    moving: np.ndarray  # (n, 3) float64, x y z
    reference: np.ndarray  # (n, 3) float64
    names: tuple[str, ...]
    in_pixels: bool  # True: index units of each image; False: physical units
    unit: str | None  # physical unit if stated ("nanometer", "micrometer", ...)
    dimensions: int  # 2 or 3 (2 when all inputs were 2D)

    def __post_init__(self) -> None:
        moving = _frozen_points(self.moving, "moving landmarks")
        reference = _frozen_points(self.reference, "reference landmarks")
        if moving.shape != reference.shape:
            raise InvalidTransform(f"{len(moving)} moving landmarks but {len(reference)} reference landmarks")
        if len(self.names) != len(moving):
            raise InvalidTransform(f"{len(self.names)} landmark names for {len(moving)} pairs")
        if self.dimensions not in (2, 3):
            raise InvalidTransform(f"landmark dimensions must be 2 or 3, not {self.dimensions}")
        object.__setattr__(self, "moving", moving)
        object.__setattr__(self, "reference", reference)
        object.__setattr__(self, "names", tuple(str(name) for name in self.names))

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass(frozen=True, eq=False)
class ImportedTransform:
    format: str  # "matrix-json" | "matrix-csv" | "mobie" | "ec-clem" | "bigwarp" | "point-lists"
    matrix: np.ndarray | None  # 4x4 moving->reference, or None when only landmarks were given
    landmarks: LandmarkPairs | None
    unit: str | None  # unit of the matrix translation / of physical coordinates, if the file says
    dimensions: int  # 2 or 3
    notes: str  # short provenance text, e.g. "eC-CLEM XML, 7 point pairs, 2D"
    nonlinear: bool = False  # the file's own registration was non-linear (eC-CLEM spline)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidTransform(f"unknown transform format {self.format!r}")
        if self.matrix is None and self.landmarks is None:
            raise InvalidTransform("a transform file must give a matrix, landmarks or both")
        if self.dimensions not in (2, 3):
            raise InvalidTransform(f"dimensions must be 2 or 3, not {self.dimensions}")
        if self.matrix is not None:
            try:
                matrix = np.array(self.matrix, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise InvalidTransform("an imported matrix must be a finite 4x4 array") from None
            if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
                raise InvalidTransform("an imported matrix must be a finite 4x4 array (did composing it overflow?)")
            matrix.flags.writeable = False
            object.__setattr__(self, "matrix", matrix)


# Shared helpers


def _fail(message: str) -> InvalidTransform:
    return InvalidTransform(" ".join(message.split()))


def _show(value: object, limit: int = 40) -> str:
    """A short quoted rendering of an offending value for messages."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | float):
        text = json.dumps(value)
    else:
        text = repr(value)
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _frozen_points(points: object, what: str) -> np.ndarray:
    try:
        array = np.array(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidTransform(f"{what} must be numbers") from None
    if array.ndim != 2 or array.shape[1] != 3:
        raise InvalidTransform(f"{what} must have shape (n, 3), not {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidTransform(f"{what} hold non-finite values")
    array.flags.writeable = False
    return array


def _clean(text: str) -> str:
    if not isinstance(text, str):
        raise _fail(f"expected text, got {type(text).__name__}")
    return text.removeprefix("\ufeff")


def _bounded(value: float, shown: object, where: str) -> float:
    if abs(value) > MAX_COORDINATE_NM and math.isfinite(value):
        raise _fail(f"{where}: {_show(shown)} is beyond ±{MAX_COORDINATE_NM:g}, too large for a registration")
    return value


def _text_number(token: str, where: str, *, allow_infinite: bool = False) -> float:
    token = token.strip()
    if _NUMBER.fullmatch(token) is None and _NON_FINITE.fullmatch(token) is None:
        raise _fail(f"{where}: {_show(token)} is not a number")
    value = float(token)  # any length of digits: a literal too large is inf, never an error
    # Only a spelled-out infinity is one (BigWarp's mark of an unpaired point); 1e400 is not finite.
    spelled = _NON_FINITE.fullmatch(token) is not None
    if math.isnan(value) or (math.isinf(value) and not (allow_infinite and spelled)):
        raise _fail(f"{where}: {_show(token)} is not finite")
    return _bounded(value, token, where)


def _json_number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{where}: {_show(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _fail(f"{where}: {_show(value)} is not finite")
    return _bounded(number, value, where)


def _load_json(text: str) -> Any:
    # Integers are read as floats: a 5000-digit literal becomes inf (reported as not finite), not a ValueError.
    try:
        return json.loads(text, parse_int=float)
    except json.JSONDecodeError as error:
        raise _fail(f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
    except RecursionError:
        raise _fail("not valid JSON: nested too deeply") from None
    except ValueError as error:
        raise _fail(f"not valid JSON: {error}") from None


def canonical_unit(unit: object) -> str | None:
    """The canonical name of a length unit ("micrometer" for um, µm, micron, ...), None for None."""
    if unit is None:
        return None
    if not isinstance(unit, str):
        raise _fail(f"unit must be a string, not {_show(unit)}")
    name = _UNITS.get(unit.strip()) or _UNITS.get(unit.strip().lower())
    if name is None:
        raise _fail(f"unknown unit {_show(unit)}; use nanometer, micrometer, millimeter, angstrom or meter")
    return name


def _homogeneous(rows: Sequence[Sequence[float]], what: str, last_row: str) -> tuple[np.ndarray, int]:
    """A 4x4 and its dimensions from 2x3, 3x3, 3x4 or 4x4 rows (already numbers of equal length)."""
    shape = (len(rows), len(rows[0]) if rows else 0)
    array = np.array(rows, dtype=np.float64).reshape(shape)
    if shape == (2, 3):
        return lift_2d(np.vstack([array, [0.0, 0.0, 1.0]])), 2
    if shape == (3, 4):
        return np.vstack([array, [0.0, 0.0, 0.0, 1.0]]), 3
    if shape in ((3, 3), (4, 4)):
        expected = np.eye(shape[0])[-1]
        if not np.allclose(array[-1], expected, rtol=0.0, atol=HOMOGENEOUS_TOLERANCE):
            want = " ".join(f"{v:g}" for v in expected)
            got = " ".join(f"{v:g}" for v in array[-1])
            raise _fail(f"{last_row} of a {shape[0]}x{shape[1]} homogeneous matrix must be {want}, not {got}")
        if shape == (3, 3):
            return lift_2d(array), 2
        array[-1] = expected
        return array, 3
    raise _fail(f"{what} is {shape[0]}x{shape[1]}; expected 2x3, 3x3 (2D), 3x4 or 4x4 (3D)")


def _as_matrix(matrix: object) -> np.ndarray:
    """A 4x4 float64 from any accepted shape, for the writers."""
    try:
        array = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail("the matrix must be an array of numbers") from None
    if array.ndim != 2:
        raise _fail(f"the matrix must be 2-dimensional, not of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise _fail("the matrix holds non-finite values (NaN or infinity)")
    return _homogeneous(array.tolist(), "the matrix", "the last row")[0]


def _format_shape(rows: Sequence[Sequence[Any]]) -> str:
    return f"{len(rows)}x{len(rows[0]) if rows else 0}"


def _dims_text(dimensions: int) -> str:
    return f"{dimensions}D"


# Matrices


def parse_matrix_json(text: str) -> ImportedTransform:
    """A matrix as a JSON nested list of rows, or an object with "matrix" and optional "unit"."""
    data = _load_json(_clean(text))
    unit = None
    if isinstance(data, dict):
        if "matrix" not in data:
            raise _fail('a matrix JSON object needs a "matrix" field (a list of rows)')
        unit = canonical_unit(data.get("unit"))
        data = data["matrix"]
    if not isinstance(data, list) or not data:
        raise _fail(f"the matrix must be a non-empty list of rows, not {_show(data)}")
    if not all(isinstance(row, list) for row in data):
        if all(not isinstance(row, list | dict) for row in data):
            raise _fail(
                f"the matrix is a flat list of {len(data)} values; give rows as nested lists "
                "(12 flat numbers are a MoBIE/BigDataViewer affine)"
            )
        raise _fail("every row of the matrix must be a list of numbers")
    width = len(data[0])
    rows: list[list[float]] = []
    for i, row in enumerate(data, 1):
        if len(row) != width:
            raise _fail(f"row {i} has {len(row)} values but row 1 has {width}")
        rows.append([_json_number(value, f"row {i}, column {j}") for j, value in enumerate(row, 1)])
    matrix, dimensions = _homogeneous(rows, "the matrix", f"row {len(rows)}")
    notes = f"matrix JSON, {_format_shape(rows)}, {_dims_text(dimensions)}" + (f", {unit}" if unit else "")
    return ImportedTransform("matrix-json", matrix, None, unit, dimensions, notes)


def parse_matrix_csv(text: str) -> ImportedTransform:
    """A matrix as text rows (comma, semicolon or whitespace separated, ``#`` comments, ``# unit: ...``)."""
    rows: list[list[float]] = []
    lines: list[int] = []
    unit = None
    for number, line in enumerate(_clean(text).splitlines(), 1):
        content, _, comment = line.partition("#")
        declared = _UNIT_COMMENT.match("#" + comment) if comment else None
        if declared:
            unit = canonical_unit(declared.group(1).rstrip(".,;"))
        tokens = [token.strip('"').strip("'") for token in re.split(r"[,;\s]+", content.strip()) if token]
        if not tokens:
            continue
        values = [_text_number(token, f"line {number}, column {j}") for j, token in enumerate(tokens, 1)]
        if rows and len(values) != len(rows[0]):
            raise _fail(f"line {number} has {len(values)} values but line {lines[0]} has {len(rows[0])}")
        rows.append(values)
        lines.append(number)
    if not rows:
        raise _fail("no matrix rows found")
    matrix, dimensions = _homogeneous(rows, "the matrix", f"the last row (line {lines[-1]})")
    notes = f"matrix CSV, {_format_shape(rows)}, {_dims_text(dimensions)}" + (f", {unit}" if unit else "")
    return ImportedTransform("matrix-csv", matrix, None, unit, dimensions, notes)


# MoBIE / BigDataViewer


def _bdv_affine(values: Sequence[object], where: str, *, from_json: bool) -> np.ndarray:
    if len(values) != 12:
        raise _fail(f"{where} must be 12 numbers (BigDataViewer row-packed 3x4 affine), got {len(values)}")
    if from_json:
        numbers = [_json_number(value, f"{where}, value {i}") for i, value in enumerate(values, 1)]
    else:
        numbers = [_text_number(str(value), f"value {i}") for i, value in enumerate(values, 1)]
    return np.vstack([np.array(numbers, dtype=np.float64).reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])


def _mobie_views(data: object) -> list[tuple[str | None, object]]:
    """(view name, sourceTransforms) of every view in a view, views file, dataset.json or transform list."""
    if isinstance(data, list):
        return [(None, data)]
    if not isinstance(data, dict):
        return []
    if set(data) == {"affine"}:
        return [(None, [data])]
    if "sourceTransforms" in data:
        name = data.get("name") if isinstance(data.get("name"), str) else None
        return [(name, data["sourceTransforms"])]
    views = data.get("views", data)
    if not isinstance(views, dict):
        raise _fail('"views" must map view names to views')
    return [
        (str(name), view["sourceTransforms"])
        for name, view in views.items()
        if isinstance(view, dict) and "sourceTransforms" in view
    ]


def _names(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(f"{where} must be a list of source names")
    return value


def _loose_names(value: object) -> list[str] | None:
    """Source names of a non-affine transform: a list, or a grid's nested lists, flattened; None if neither."""
    if not isinstance(value, list):
        return None
    names = [name for item in value for name in (item if isinstance(item, list) else [item])]
    return names if all(isinstance(name, str) for name in names) else None


def _compose_mobie(view: str | None, transforms: object) -> tuple[np.ndarray, str] | None:
    """The composed affine of the first affine's first source, with notes; None if the view has no affine."""
    label = f"view {view!r}" if view else "sourceTransforms"
    if not isinstance(transforms, list):
        raise _fail(f"{label}: sourceTransforms must be a list")
    items: list[tuple[str, str, dict[str, Any]]] = []
    for index, item in enumerate(transforms, 1):
        where = f"{label}, transform {index}"
        if not isinstance(item, dict) or len(item) != 1:
            raise _fail(f"{where} must be an object with one key (affine, crop, grid, ...)")
        kind, body = next(iter(item.items()))
        if not isinstance(body, dict):
            raise _fail(f"{where}: {kind} must be an object")
        items.append((where, kind, body))
    affines = [(where, body) for where, kind, body in items if kind == "affine"]
    if not affines:
        return None
    first = _names(affines[0][1].get("sources"), f"{affines[0][0]}: sources")
    source = first[0] if first else None  # an affine without sources is taken to apply to every source
    tracked = {source}
    matrix = np.eye(4)
    composed = skipped = 0
    for where, kind, body in items:
        if kind == "affine":
            sources = _names(body.get("sources"), f"{where}: sources")
            renamed = _names(body.get("sourceNamesAfterTransform"), f"{where}: sourceNamesAfterTransform")
            if not isinstance(body.get("parameters"), list):
                raise _fail(f"{where}: affine needs 12 parameters")
            affine = _bdv_affine(body["parameters"], f"{where}: parameters", from_json=True)
        else:
            sources = _loose_names(body.get("sources", body.get("nestedSources")))
            renamed = _loose_names(body.get("sourceNamesAfterTransform"))
        if source is not None and sources is not None and not tracked & set(sources):
            continue
        if kind == "affine":
            with np.errstate(over="ignore", invalid="ignore"):  # a product that overflows is refused as non-finite
                matrix = affine @ matrix
            composed += 1
        else:
            skipped += 1
        if source is not None and sources and renamed:
            if len(renamed) != len(sources):
                raise _fail(f"{where}: sourceNamesAfterTransform must name as many sources as sources")
            # the renamed copy carries the transforms; the original name stays untransformed
            tracked = {after for before, after in zip(sources, renamed, strict=True) if before in tracked}
    if not np.all(np.isfinite(matrix)):
        raise _fail(f"{label}: composing its {composed} affines overflows: not finite")
    notes = f"MoBIE {label}, {composed} affine{'s' if composed > 1 else ''}"
    notes += " composed in order" if composed > 1 else ""
    notes += f" for source {source!r}" if source else ""
    notes += f", {skipped} non-affine transform{'s' if skipped > 1 else ''} ignored" if skipped else ""
    return matrix, notes


def parse_mobie(text: str) -> ImportedTransform:
    """12 row-packed numbers, or the composed affine of the first MoBIE view that has one."""
    body = _clean(text).strip()
    if not body:
        raise _fail("empty file")
    data: object = None
    if body[0] == "{":
        data = _load_json(body)
    elif body[0] == "[":
        try:
            data = _load_json(body)
        except InvalidTransform:
            data = None  # "[1 0 0 ...]": read as separated numbers below
    if data is None:
        tokens = [token for token in re.split(r"[,\s]+", body.strip("[]()")) if token]
        matrix = _bdv_affine(tokens, "the affine", from_json=False)
        return ImportedTransform("mobie", matrix, None, None, 3, "BigDataViewer/MoBIE 12-number affine")
    if isinstance(data, list) and all(not isinstance(value, dict | list) for value in data):
        matrix = _bdv_affine(data, "the affine", from_json=True)
        return ImportedTransform("mobie", matrix, None, None, 3, "BigDataViewer/MoBIE 12-number affine")
    if isinstance(data, list) and any(isinstance(value, list) for value in data):
        raise _fail("a nested list is a matrix (rows), not a MoBIE affine; give 12 numbers or a MoBIE view")
    views = _mobie_views(data)
    found = [result for view, transforms in views if (result := _compose_mobie(view, transforms))]
    if not found:
        raise _fail("no MoBIE affine source transform found (expected sourceTransforms with an affine)")
    matrix, notes = found[0]
    if len(found) > 1:
        notes += f" (first of {len(found)} views with affines)"
    return ImportedTransform("mobie", matrix, None, None, 3, notes)


# eC-CLEM


def _parse_xml(text: str) -> ET.Element:
    body = _clean(text).strip()
    if not body:
        raise _fail("empty file")
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", body, re.IGNORECASE):
        raise _fail("XML with a DOCTYPE or ENTITY declaration is not accepted")
    try:
        return ET.fromstring(body)
    except ET.ParseError as error:
        raise _fail(f"malformed XML: {error}") from None
    except UnicodeEncodeError:  # the parser takes UTF-8: a lone surrogate (from a JSON "\ud800") has none
        raise _fail("malformed XML: the text holds a lone surrogate") from None


def _attribute_number(element: ET.Element, name: str, where: str) -> float:
    if name not in element.attrib:
        raise _fail(f"{where} has no attribute {name}")
    return _text_number(element.attrib[name], f"{where}, attribute {name}")


def _ec_clem_matrix(element: ET.Element, where: str) -> tuple[np.ndarray, int]:
    indices = [_MATRIX_ATTRIBUTE.fullmatch(name) for name in element.attrib]
    size = 4 if any(match and "3" in match.groups() for match in indices) else 3
    rows = [[_attribute_number(element, f"m{i}{j}", where) for j in range(size)] for i in range(size)]
    return _homogeneous(rows, where, f"{where}: row {size - 1}")


def _ec_clem_dataset(element: ET.Element, where: str) -> tuple[np.ndarray, list[str], int]:
    declared = element.get("dimension")
    points: list[dict[int, float]] = []
    names: list[str] = []
    for k, point in enumerate(element.findall("point"), 1):
        coordinates: dict[int, float] = {}
        for coordinate in point.findall("coordinate"):
            axis_text = coordinate.get("dimension", "").strip()
            # Short before int(): Python refuses to convert integers of more than 4300 digits.
            if len(axis_text) > 8 or _INTEGER.fullmatch(axis_text) is None or not 0 <= int(axis_text) <= 2:
                raise _fail(f"{where} point {k}: coordinate dimension {_show(axis_text)} is not 0, 1 or 2")
            coordinates[int(axis_text)] = _text_number(coordinate.text or "", f"{where} point {k}, coordinate")
        points.append(coordinates)
        names.append(point.get("id", str(k - 1)))
    if declared is not None:
        if declared.strip() not in ("2", "3"):
            raise _fail(f"{where}: dimension {_show(declared)} is not 2 or 3")
        dimension = int(declared)
    else:
        dimension = 3 if any(2 in coordinates for coordinates in points) else 2
    count = element.get("n")
    if count is not None and count.strip() != str(len(points)):
        raise _fail(f"{where} says n={_show(count)} but has {len(points)} points")
    array = np.zeros((len(points), 3))
    for k, coordinates in enumerate(points):
        if sorted(coordinates) != list(range(dimension)):
            raise _fail(f"{where} point {k + 1} has coordinates {sorted(coordinates)}, expected 0..{dimension - 1}")
        for axis, value in coordinates.items():
            array[k, axis] = value
    return array, names, dimension


def _ec_clem_sizes(transformation: ET.Element | None) -> dict[str, dict[str, tuple[int, float]]]:
    """{"source"|"target": {"X": (size, pixel size µm), ...}} from v2 sequenceSize elements (best effort)."""
    sizes: dict[str, dict[str, tuple[int, float]]] = {}
    if transformation is None:
        return sizes
    for element in transformation.findall("sequenceSize"):
        axes: dict[str, tuple[int, float]] = {}
        for dimension in element.findall("dimensionSize"):
            try:
                size, pixel = int((dimension.text or "").strip()), float(dimension.get("pixelSize", ""))
            except ValueError:
                continue
            axes[dimension.get("name", "")] = (size, pixel)
        sizes[element.get("type", f"#{len(sizes) + 1}")] = axes
    return sizes


def parse_ec_clem_xml(text: str) -> ImportedTransform:
    """An eC-CLEM transformation file: v2 matrix and/or fiducial datasets, or v1 matrices / point pairs."""
    root = _parse_xml(text)
    matrix_elements = list(root.iter("MatrixTransformation"))
    transformations = list(root.iter("transformation"))
    v1_pairs = list(root.iter("pointspairsinphysicalcoordinates"))
    target_size = next(root.iter("TargetSize"), None)
    transformation = transformations[-1] if transformations else None  # eC-CLEM appends; the last is current
    details: list[str] = []

    matrix = None
    matrix_dimensions = 3
    for k, element in enumerate(matrix_elements, 1):
        step, step_dimensions = _ec_clem_matrix(element, f"MatrixTransformation {k}")
        with np.errstate(over="ignore", invalid="ignore"):  # a product that overflows is refused as non-finite
            matrix = step if matrix is None else step @ matrix  # later updates apply after earlier ones
        matrix_dimensions = min(matrix_dimensions, step_dimensions)
    if matrix is not None and not np.all(np.isfinite(matrix)):
        raise _fail(f"composing the {len(matrix_elements)} MatrixTransformation elements overflows: not finite")
    if len(matrix_elements) > 1:
        details.append(f"{len(matrix_elements)} matrices composed in order")

    version = "v2" if transformation is not None else "v1" if (target_size is not None or v1_pairs) else None
    if version is None and any("order" in element.attrib for element in matrix_elements):
        version = "v1"
    v1_3d = any("formerpixelsizeX" in element.attrib for element in matrix_elements) or (
        target_size is not None and "nz" in target_size.attrib
    )
    if version == "v2" or (version == "v1" and (v1_3d or v1_pairs)):
        unit: str | None = "micrometer"
    elif version == "v1":
        unit = "pixel"
        matrix_dimensions = 2
        details.append("matrix in pixels")
    else:
        unit = None

    moving = reference = None
    names: list[str] = []
    dimensions = matrix_dimensions
    datasets = transformation.findall("dataset") if transformation is not None else []
    if datasets:
        if len(datasets) != 2:
            raise _fail(f"a transformation element must hold 2 datasets (source and target), not {len(datasets)}")
        first, second = datasets
        source, target = (first, second) if first.get("type") == "source" else (second, first)
        moving, names, moving_dimension = _ec_clem_dataset(source, "source dataset")
        reference, _, reference_dimension = _ec_clem_dataset(target, "target dataset")
        if len(moving) != len(reference):
            raise _fail(f"the source dataset has {len(moving)} points but the target dataset has {len(reference)}")
        if len(moving) == 0:
            raise _fail("the fiducial datasets are empty")
        if moving_dimension == 2 or reference_dimension == 2:
            dimensions = 2
    elif v1_pairs:
        rows = []
        for k, element in enumerate(v1_pairs, 1):
            where = f"pointspairsinphysicalcoordinates {k}"
            rows.append([_attribute_number(element, name, where) for name in _V1_PAIR_ATTRIBUTES])
            names.append(element.get("pairnumber", str(k - 1)))
        array = np.array(rows)
        moving, reference = array[:, :3], array[:, 3:]
    if moving is not None and reference is not None and np.ptp(moving[:, 2]) == 0 and np.ptp(reference[:, 2]) == 0:
        dimensions = 2  # 2D ROIs sit at z = 0 in Icy
    sizes = _ec_clem_sizes(transformation)
    if len(sizes) == 2 and all(axes.get("Z", (1, 0.0))[0] <= 1 for axes in sizes.values()):
        dimensions = 2
    if matrix is None and moving is None:
        raise _fail("no MatrixTransformation, fiducial dataset or point pair found: not an eC-CLEM transformation file")

    if dimensions == 2:
        if matrix is not None:
            planar = lift_2d(matrix[np.ix_([0, 1, 3], [0, 1, 3])])
            if not np.allclose(planar, matrix, rtol=0.0, atol=1e-12):
                details.append("z part of the matrix replaced by identity")
            matrix = planar
        if moving is not None and reference is not None:
            moving, reference = moving.copy(), reference.copy()
            moving[:, 2] = reference[:, 2] = 0.0
    landmarks = None
    if moving is not None and reference is not None:
        landmarks = LandmarkPairs(moving, reference, tuple(names), False, unit, dimensions)

    kind = transformation.get("type") if transformation is not None else None
    header = f"eC-CLEM XML ({version}" + (f", {kind}" if kind else "") + ")" if version else "eC-CLEM XML"
    parts = [header]
    if landmarks is not None:
        parts.append(f"{landmarks.count} point pairs")
    if matrix is None:
        parts.append("landmarks only" + (" (non-linear)" if kind == "SPLINE" else ""))
    parts.append(_dims_text(dimensions))
    if unit and unit != "pixel":
        parts.append(unit)
    for side in ("source", "target"):
        pixel = sizes.get(side, {}).get("X")
        if pixel:
            parts.append(f"{side} pixel {pixel[1]:g} µm")
    if target_size is not None and version == "v1":
        parts.append(f"target {target_size.get('width', '?')}x{target_size.get('height', '?')} px")
    if len(transformations) > 1:
        parts.append(f"last of {len(transformations)} transformations")
    parts.extend(details)
    nonlinear = matrix is None and (kind == "SPLINE" or bool(v1_pairs))
    return ImportedTransform("ec-clem", matrix, landmarks, unit, dimensions, ", ".join(parts), nonlinear)


# BigWarp


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the non-blank rows of a CSV text."""
    reader = csv.reader(io.StringIO(_clean(text)))
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((reader.line_num, row))
    except csv.Error as error:
        raise _fail(f"not readable as CSV (line {reader.line_num}): {error}") from None
    return rows


def _looks_like_bigwarp(text: str) -> bool:
    try:
        rows = _csv_rows(text)
    except InvalidTransform:
        return False
    if not rows:
        return False
    first = rows[0][1]
    if first and len(first) > 1 and first[1].strip().lower() == "active" and len(rows) > 1:
        first = rows[1][1]
    return len(first) in (6, 8) and first[1].strip().lower() in ("true", "false")


def parse_bigwarp_csv(text: str) -> ImportedTransform:
    """BigWarp landmarks: name, active, moving x y [z], fixed x y [z]; inactive and unpaired rows skipped."""
    rows = _csv_rows(text)
    if rows and len(rows[0][1]) > 1 and rows[0][1][1].strip().lower() == "active":
        rows = rows[1:]  # a header some tools add; BigWarp itself writes none
    if not rows:
        raise _fail("no landmark rows found")
    width = len(rows[0][1])
    if width not in (6, 8):
        raise _fail(f"line {rows[0][0]} has {width} columns; BigWarp landmark rows have 6 (2D) or 8 (3D)")
    dimensions = 2 if width == 6 else 3
    moving, reference, names = [], [], []
    inactive = unpaired = 0
    for line, row in rows:
        if len(row) != width:
            raise _fail(f"line {line} has {len(row)} columns but the first row has {width}")
        flag = row[1].strip().lower()
        if flag not in ("true", "false"):
            raise _fail(f"line {line}: active flag {_show(row[1])} is neither true nor false")
        values = [
            _text_number(cell, f"line {line}, column {j}", allow_infinite=True) for j, cell in enumerate(row[2:], 3)
        ]
        if flag == "false":
            inactive += 1
            continue
        if any(math.isinf(value) for value in values):
            unpaired += 1  # placed in one image only: BigWarp stores the other point as Infinity
            continue
        point_moving, point_reference = values[:dimensions], values[dimensions:]
        moving.append([*point_moving, 0.0][:3])
        reference.append([*point_reference, 0.0][:3])
        names.append(row[0].strip())
    if not moving:
        raise _fail(f"no active, paired landmarks among {len(rows)} rows")
    landmarks = LandmarkPairs(np.array(moving), np.array(reference), tuple(names), False, None, dimensions)
    notes = f"BigWarp landmarks CSV, {landmarks.count} active pairs, {_dims_text(dimensions)}"
    skipped = [f"{inactive} inactive"] if inactive else []
    skipped += [f"{unpaired} unpaired"] if unpaired else []
    if skipped:
        notes += f" ({' and '.join(skipped)} skipped)"
    return ImportedTransform("bigwarp", None, landmarks, None, dimensions, notes)


# 3DCT-style point lists


@dataclass(frozen=True, eq=False)
class _PointList:
    ids: list[str] | None
    points: np.ndarray  # (n, 3), z = 0 when absent
    has_z: bool


def _is_number(token: str) -> bool:
    return _NUMBER.fullmatch(token) is not None or _NON_FINITE.fullmatch(token) is not None


def _normal_id(token: str) -> str:
    """Integer ids without sign or leading zeros ("007" pairs with "7"); others as written."""
    if _INTEGER.fullmatch(token) is None:
        return token
    try:
        return str(int(token))
    except ValueError:  # more digits than Python converts (4300): the same normal form, by hand
        digits = token.lstrip("+-").lstrip("0") or "0"
        return ("-" if token.startswith("-") and digits != "0" else "") + digits


def _id_list(ids: list[str], limit: int = 20) -> str:
    return " ".join(ids[:limit]) + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def _read_point_list(text: str, label: str) -> _PointList:
    header: list[str] | None = None
    header_line = 0
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(_clean(text).splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        tokens = [token for token in re.split(r"[\s,;]+", line.strip()) if token]
        if not tokens:
            continue
        if header is None and not rows and not all(_is_number(token) for token in tokens):
            header, header_line = tokens, number
            continue
        rows.append((number, tokens))
    if not rows:
        raise _fail(f"{label}: no coordinates found")
    width = len(rows[0][1])
    for number, tokens in rows:
        if len(tokens) != width:
            raise _fail(f"{label} line {number} has {len(tokens)} columns but line {rows[0][0]} has {width}")

    id_column: int | None = None
    if header is not None:
        lowered = [name.lower() for name in header]
        if len(header) == width - 1:
            offset, id_column = 1, 0  # 3DCT leaves the id column's header blank
        elif len(header) == width:
            offset = 0
            id_column = next((i for i, name in enumerate(lowered) if name in _ID_HEADERS), None)
        else:
            raise _fail(f"{label} line {header_line}: the header names {len(header)} columns but rows have {width}")
        named = {name: i + offset for i, name in reversed(list(enumerate(lowered)))}
        if "x" in named and "y" in named:
            columns = [named["x"], named["y"]] + ([named["z"]] if "z" in named else [])
        else:
            columns = [i for i in range(width) if i != id_column][:3]
    else:
        first = [tokens[0] for _, tokens in rows]
        if width >= 4 and all(_INTEGER.fullmatch(token) for token in first) and len(set(first)) == len(first):
            id_column = 0
        columns = [i for i in range(width) if i != id_column][:3]
    if len(columns) < 2:
        raise _fail(f"{label}: needs at least x and y columns, found {len(columns)} coordinate column")

    ids: list[str] | None = [] if id_column is not None else None
    seen: dict[str, int] = {}
    points = np.zeros((len(rows), 3))
    for k, (number, tokens) in enumerate(rows):
        for axis, column in enumerate(columns):
            points[k, axis] = _text_number(tokens[column], f"{label} line {number}, column {column + 1}")
        if ids is not None and id_column is not None:
            name = _normal_id(tokens[id_column])
            if name in seen:
                raise _fail(f"{label} line {number}: id {name} appears twice (also line {seen[name]})")
            seen[name] = number
            ids.append(name)
    return _PointList(ids, points, len(columns) == 3)


def parse_point_lists(moving_text: str, reference_text: str) -> ImportedTransform:
    """Two pixel coordinate lists (3DCT style), paired by id when both have ids, else by row order."""
    moving = _read_point_list(moving_text, "moving list")
    reference = _read_point_list(reference_text, "reference list")
    details: list[str] = []
    if moving.ids is not None and reference.ids is not None:
        position = {name: k for k, name in enumerate(reference.ids)}
        names = [name for name in moving.ids if name in position]
        only_moving = [name for name in moving.ids if name not in position]
        moving_ids = set(moving.ids)
        only_reference = [name for name in reference.ids if name not in moving_ids]
        if len(names) < MIN_POINT_LIST_PAIRS:
            raise _fail(
                f"only {len(names)} ids are in both lists (need at least {MIN_POINT_LIST_PAIRS}); "
                f"moving ids: {_id_list(moving.ids)}; reference ids: {_id_list(reference.ids)}"
            )
        moving_row = {name: k for k, name in enumerate(moving.ids)}
        moving_points = moving.points[[moving_row[name] for name in names]]
        reference_points = reference.points[[position[name] for name in names]]
        how = "by id"
        if only_moving:
            details.append(f"ids only in the moving list: {_id_list(only_moving)}")
        if only_reference:
            details.append(f"ids only in the reference list: {_id_list(only_reference)}")
    else:
        if len(moving.points) != len(reference.points):
            raise _fail(
                f"the moving list has {len(moving.points)} points and the reference list {len(reference.points)}; "
                "lists without ids on both sides are paired by row, so the counts must match"
            )
        if len(moving.points) < MIN_POINT_LIST_PAIRS:
            raise _fail(f"only {len(moving.points)} point pairs (need at least {MIN_POINT_LIST_PAIRS})")
        names = moving.ids or reference.ids or [str(k) for k in range(1, len(moving.points) + 1)]
        moving_points, reference_points = moving.points, reference.points
        how = "by row order"
        if moving.ids is not None or reference.ids is not None:
            details.append(f"ids of the {'moving' if moving.ids is not None else 'reference'} list used as names")
    flat = [
        f"{side} Z constant" if listed.has_z else f"{side} list has no Z"
        for side, points, listed in (("moving", moving_points, moving), ("reference", reference_points, reference))
        if not listed.has_z or np.ptp(points[:, 2]) == 0
    ]
    dimensions = 2 if flat else 3
    if flat:
        moving_points, reference_points = moving_points.copy(), reference_points.copy()
        moving_points[:, 2] = reference_points[:, 2] = 0.0
        details.insert(0, f"z set to 0: {' and '.join(flat)}")
    landmarks = LandmarkPairs(moving_points, reference_points, tuple(names), True, None, dimensions)
    notes = "; ".join([f"point lists, {landmarks.count} pairs {how}, {_dims_text(dimensions)}, pixels", *details])
    return ImportedTransform("point-lists", None, landmarks, None, dimensions, notes)


# Dispatch


def _json_kind(body: str) -> str:
    try:
        data = _load_json(body)
    except InvalidTransform:
        return "matrix-json"  # its parser reports the error
    if isinstance(data, list):
        if len(data) == 12 and all(not isinstance(value, dict | list) for value in data):
            return "mobie"
        if data and all(isinstance(item, dict) for item in data):
            return "mobie"
        return "matrix-json"
    try:
        return "mobie" if _mobie_views(data) else "matrix-json"
    except InvalidTransform:
        return "mobie"


def _plain_kind(body: str) -> str:
    """mobie (12 numbers), matrix-csv (a valid matrix) or point-lists for text without a known extension."""
    rows = []
    for line in body.splitlines():
        content = line.split("#", 1)[0]
        tokens = [token for token in re.split(r"[,;\s]+", content.strip().strip("[]()")) if token]
        if tokens:
            rows.append(tokens)
    if not rows or not all(_is_number(token) for row in rows for token in row):
        return "point-lists" if rows else "matrix-csv"
    if len(rows) == 1 and len(rows[0]) == 12:
        return "mobie"
    try:
        numbers = [[float(token) for token in row] for row in rows]
        if len({len(row) for row in numbers}) == 1 and all(math.isfinite(v) for row in numbers for v in row):
            _homogeneous(numbers, "the matrix", "the last row")
            return "matrix-csv"
    except InvalidTransform:
        pass
    return "point-lists"


def detect_format(filename: str, text: str) -> str:
    """The format of a transform file, from its extension and then its content (one of ``FORMATS``)."""
    suffix = PurePath(str(filename)).suffix.lower()
    body = _clean(text).lstrip()
    if suffix == ".xml":
        return "ec-clem"
    if suffix == ".json":
        return _json_kind(body)
    if suffix == ".csv":
        return "bigwarp" if _looks_like_bigwarp(body) else "matrix-csv"
    if body.startswith("<"):
        return "ec-clem"
    if body.startswith("{") or (body.startswith("[") and _json_kind(body) == "mobie"):
        return _json_kind(body)
    if body.startswith("[") and body.rstrip().endswith("]") and "[[" in "".join(body.split()):
        return "matrix-json"
    if _looks_like_bigwarp(body):
        return "bigwarp"
    return _plain_kind(body)


_PARSERS = {
    "matrix-json": parse_matrix_json,
    "matrix-csv": parse_matrix_csv,
    "mobie": parse_mobie,
    "ec-clem": parse_ec_clem_xml,
    "bigwarp": parse_bigwarp_csv,
}


def parse_transform_file(filename: str, text: str, *, reference_text: str | None = None) -> ImportedTransform:
    """Any supported file; with ``reference_text`` the pair is read as moving and reference point lists."""
    name = PurePath(str(filename)).name or "transform file"
    try:
        if reference_text is not None:
            return parse_point_lists(text, reference_text)
        kind = detect_format(filename, text)
        if kind == "point-lists":
            raise _fail("looks like a coordinate list; point lists need the matching reference list too")
        return _PARSERS[kind](text)
    except InvalidTransform as error:
        raise InvalidTransform(f"{name}: {error}") from error


# Export


def matrix_json(matrix: np.ndarray, unit: str) -> dict[str, Any]:
    """The matrix JSON that ``parse_matrix_json`` reads: 4x4 rows, unit and convention."""
    canonical = canonical_unit(unit)
    if canonical is None:
        raise _fail("matrix_json needs a unit")
    return {"matrix": _as_matrix(matrix).tolist(), "unit": canonical, "convention": CONVENTION}


def mobie_view(
    view_name: str,
    source_name: str,
    matrix: np.ndarray,
    *,
    unit_scale: float = 1.0,
    display: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A MoBIE views file placing ``source_name`` with ``matrix``; the translation is multiplied by
    ``unit_scale`` (1e-3 turns a nanometre matrix into MoBIE's usual micrometres)."""
    if not isinstance(view_name, str) or not view_name.strip():
        raise _fail("a MoBIE view needs a name")
    if not isinstance(source_name, str) or _MOBIE_NAME.fullmatch(source_name) is None:
        raise _fail(
            f"MoBIE source names cannot be empty or hold spaces, commas, semicolons or slashes: {source_name!r}"
        )
    try:
        scale = math.nan if isinstance(unit_scale, bool) else float(unit_scale)
    except (TypeError, ValueError):
        scale = math.nan
    if not 0 < scale < math.inf:
        raise _fail(f"unit_scale must be a positive finite number, not {unit_scale!r}")
    affine = _as_matrix(matrix)
    affine[:3, 3] *= scale
    if display is None:
        shown: dict[str, Any] = {
            "imageDisplay": {
                "name": source_name,
                "sources": [source_name],
                "color": "white",
                "contrastLimits": [0.0, 255.0],
                "opacity": 1.0,
            }
        }
    elif isinstance(display, dict):
        shown = copy.deepcopy(display)
    else:
        raise _fail("display must be a MoBIE source display object, e.g. {'imageDisplay': {...}}")
    view = {
        "isExclusive": False,
        "uiSelectionGroup": "registration",
        "sourceDisplays": [shown],
        "sourceTransforms": [{"affine": {"parameters": affine[:3].reshape(12).tolist(), "sources": [source_name]}}],
    }
    return {"views": {view_name: view}}
