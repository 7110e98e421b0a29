"""Annotation layers of the database in a Neuroglancer viewer state, and what a viewer drew into them.

Each database layer appears twice in a session's state:

- its *view layer* (named as the layer): a Neuroglancer annotation layer whose sources are the layer's
  precomputed annotation sources, one per annotation type, so that a layer of millions of annotations is
  read cell by cell and the state never carries them; in a session with edit layers, the view
  ``editing=<the session's view key>`` of them, which leaves out what the edit layers hold (otherwise
  Neuroglancer would draw a read-only copy over each and pick that one to move or delete);
- for an owner who may annotate, its *edit layer* (``"<name> ✎"``): a local annotation layer in nanometres
  (the database's space) where Neuroglancer's own tools draw, move and delete.

What the session last saved of each edit layer is kept in the state itself, under ``RECORD_KEY``
(``SessionAnnotations``): the Neuroglancer annotation id of each drawn annotation and the database id it was
saved as, with the geometry and description saved. Neuroglancer ignores the key and posts states without
it; the server carries it from the stored state into each new one, so every server process reads the same
record. An existing annotation taken into an edit layer for editing has the id ``db-<database id>``.

Pure code: no database, no web framework.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from annotations.annotation_store import AnnotationRecord, LayerRecord
from annotations.errors import InvalidState
from annotations.layer_specs import GEOMETRY_FIELDS, RANK, AnnotationIn
from annotations.views import CURRENT, EDITING

RECORD_KEY = "lamella"
EDIT_SUFFIX = " ✎"
NANOMETRES = {axis: [1e-9, "m"] for axis in "xyz"}
EDIT_COLOUR = "#ffd000"
VIEW_COLOUR = "#ff6ad5"
TOOLS = {"point": "annotatePoint", "line": "annotateLine", "axis_aligned_bounding_box": "annotateBoundingBox",
         "ellipsoid": "annotateSphere", "polyline": "annotatePolyline"}
# Neuroglancer's JSON names of each type's geometry, in the order of ``layer_specs.GEOMETRY_FIELDS``.
NG_GEOMETRY = {"point": ("point",), "line": ("pointA", "pointB"), "axis_aligned_bounding_box": ("pointA", "pointB"),
               "ellipsoid": ("center", "radii"), "polyline": ("points",)}
COPY_ID = re.compile(r"db-([1-9][0-9]{0,9})")
MAX_PROBLEMS = 20
MAX_DESCRIPTION = 10_000


def edit_layer_name(name: str) -> str:
    return name + EDIT_SUFFIX


def copy_id(annotation_id: int) -> str:
    """The Neuroglancer id of an existing annotation taken into an edit layer."""
    return f"db-{annotation_id}"


# The record kept in the state


class SavedAnnotation(BaseModel):
    """What a session last saved of one annotation it drew (or took for editing)."""

    id: int | None = None  # the database id; None: never saved (its creation failed)
    type: str
    geometry: list[float]  # flat, nm, float32-exact, as saved (or as tried, when never saved)
    description: str = ""
    error: str | None = None  # why the last attempt failed (shown until a later change saves)
    tried: list[float] | None = None  # the geometry and description of that failed attempt: not tried again
    tried_description: str = ""  # until the annotation changes


class EditLayerRecord(BaseModel):
    layer_id: int
    saved: dict[str, SavedAnnotation] = Field(default_factory=dict)  # Neuroglancer id -> what was saved
    view_revision: int = 0  # counts existing annotations taken for editing: the view layer's URL changes with it


class Problem(BaseModel):
    """A change drawn in the viewer that could not be saved, as the side panel shows it."""

    seq: int
    at: datetime
    layer: str
    message: str


class SessionAnnotations(BaseModel):
    """The record under ``RECORD_KEY``: edit layers by their name in the state, and recent problems."""

    edit_layers: dict[str, EditLayerRecord] = Field(default_factory=dict)
    problems: list[Problem] = Field(default_factory=list)
    seq: int = 0

    @classmethod
    def of(cls, state: dict[str, Any]) -> SessionAnnotations:
        """The record of a stored state (an empty one if it has none, or one that cannot be read)."""
        try:
            return cls.model_validate(state.get(RECORD_KEY) or {})
        except ValidationError:
            return cls()

    def report(self, layer: str, message: str, at: datetime) -> None:
        self.seq += 1
        self.problems = [*self.problems, Problem(seq=self.seq, at=at, layer=layer, message=message)][-MAX_PROBLEMS:]

    def database_id(self, layer_name: str, annotation_id: str) -> int | None:
        """The database id behind an annotation of an edit layer (None: not saved)."""
        record = self.edit_layers.get(layer_name)
        saved = record.saved.get(annotation_id) if record is not None else None
        return saved.id if saved is not None else None


def with_record(state: dict[str, Any], record: SessionAnnotations) -> dict[str, Any]:
    """``state`` (not copied) carrying ``record``: whatever a client sent under the key is replaced."""
    state[RECORD_KEY] = record.model_dump(mode="json")
    return state


# Layers of a state


# A view layer's source: the view (last segment) of a layer's precomputed source that this module chooses.
VIEW_SOURCE = re.compile(r"(precomputed://.+/annotation-layers/[0-9]+/precomputed/[a-z_]+/)"
                         rf"(?:{CURRENT}|{EDITING.pattern})")


def source_url(origin: str, dataset_id: int, layer_id: int, kind: str, view: str = CURRENT) -> str:
    return f"precomputed://{origin}/api/datasets/{dataset_id}/annotation-layers/{layer_id}/precomputed/{kind}/{view}"


def new_view_key() -> str:
    """A session's view key: its public name in the URLs of its view layers (not a credential)."""
    return secrets.token_hex(8)


def editing_view(view_key: str | None, revision: int = 0) -> str:
    """The view a session's view layers read: without what its edit layers hold (``current`` without a key)."""
    if not view_key:
        return CURRENT
    return f"editing={view_key}" + (f".{revision}" if revision else "")


def view_layer(origin: str, layer: LayerRecord, view: str = CURRENT) -> dict[str, Any]:
    """The read-only layer of a database layer: its precomputed sources, one per type, in ``view``."""
    colours = [label.color for label in layer.spec.labels if label.color]
    return {"type": "annotation", "name": layer.name,
            "source": [source_url(origin, layer.dataset_id, layer.id, kind, view) for kind in layer.spec.types],
            "annotationColor": colours[0] if colours else VIEW_COLOUR}


def retargeted(layer: dict[str, Any], view: str) -> bool:
    """Point the view layer ``layer`` (changed in place) at ``view`` of its sources; whether anything changed.
    Only sources in a view this module chooses (``current`` or ``editing=…``) change."""
    def moved(url: Any) -> Any:
        match = VIEW_SOURCE.fullmatch(url) if isinstance(url, str) else None
        return url if match is None else match.group(1) + view

    changed = False
    sources = layer.get("source")
    items = sources if isinstance(sources, list) else [sources]
    for i, item in enumerate(items):
        url = item.get("url") if isinstance(item, dict) else item
        new = moved(url)
        if new != url:
            changed = True
            if isinstance(item, dict):
                item["url"] = new
            else:
                items[i] = new
    if changed and not isinstance(sources, list):
        layer["source"] = items[0]
    return changed


def held_by_layer(state: Any) -> dict[str, list[int]]:
    """The database ids of the annotations a session's edit layers hold, by layer id (as text: a JSON key),
    read from its state as it is (whatever it holds: nothing readable is nothing held)."""
    record = state.get(RECORD_KEY) if isinstance(state, dict) else None
    layers = record.get("edit_layers") if isinstance(record, dict) else None
    held: dict[str, set[int]] = {}
    for entry in layers.values() if isinstance(layers, dict) else ():
        if isinstance(entry, dict) and type(entry.get("layer_id")) is int and isinstance(entry.get("saved"), dict):
            held.setdefault(str(entry["layer_id"]), set()).update(
                saved["id"] for saved in entry["saved"].values()
                if isinstance(saved, dict) and type(saved.get("id")) is int)
    return {layer: sorted(ids) for layer, ids in held.items() if ids}


def edit_layer(layer: LayerRecord) -> dict[str, Any]:
    """The local layer where the viewer draws into a database layer, in nanometres as the database."""
    return {"type": "annotation", "name": edit_layer_name(layer.name),
            "source": {"url": "local://annotations", "transform": {"outputDimensions": NANOMETRES}},
            "tool": TOOLS[layer.spec.types[0]], "tab": "annotations", "annotationColor": EDIT_COLOUR,
            "annotations": []}


def state_layers(state: dict[str, Any]) -> list[dict[str, Any]]:
    """A state's layers as a list of layer objects, whatever a stored state holds: Neuroglancer's older
    name-keyed form becomes the list form; anything that is not a layer object is left out."""
    layers = state.get("layers")
    if isinstance(layers, dict):
        return [{**layer, "name": name} for name, layer in layers.items() if isinstance(layer, dict)]
    if isinstance(layers, list):
        return [layer for layer in layers if isinstance(layer, dict)]
    return []


def copied_state(state: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``state`` to change, with its layers in the list form (``state_layers``)."""
    new_state = copy.deepcopy(state)
    new_state["layers"] = state_layers(new_state)
    return new_state


def checked_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state a client sends, with its layers in the list form; InvalidState if they are neither a list of
    layer objects nor Neuroglancer's name-keyed object of them."""
    layers = state.get("layers")
    if layers is None or (isinstance(layers, list) and all(isinstance(layer, dict) for layer in layers)):
        return state
    if isinstance(layers, dict) and all(isinstance(layer, dict) for layer in layers.values()):
        return {**state, "layers": state_layers(state)}
    raise InvalidState('"layers" must be a list of layer objects (or an object of them keyed by name)')


def with_database_layers(state: dict[str, Any], record: SessionAnnotations, origin: str,
                         layers: Sequence[LayerRecord], editable: bool,
                         view_key: str | None = None) -> tuple[dict[str, Any], bool]:
    """``state`` (a copy) with a view layer for each database layer it lacks and, when ``editable``, an edit
    layer (``record`` learns it); the view layers of layers with an edit layer read the session's editing
    view (``view_key``). Returns (state, whether anything changed)."""
    new_state = copied_state(state)
    by_name = {layer.get("name"): layer for layer in new_state["layers"]}
    tracked = {entry.layer_id: (name, entry) for name, entry in record.edit_layers.items()}
    added = False
    for layer in layers:
        name, entry = tracked.get(layer.id, (edit_layer_name(layer.name), None))
        new_edit_layer = editable and entry is None and name not in by_name
        if new_edit_layer:
            entry = record.edit_layers[name] = EditLayerRecord(layer_id=layer.id)
        # Only an edit layer the viewer shows hides its annotations from the view layer.
        shown = new_edit_layer or name in by_name
        view = editing_view(view_key, entry.view_revision) if shown and entry is not None else CURRENT
        if layer.name not in by_name:
            new_state["layers"].append(view_layer(origin, layer, view))
            added = True
        elif retargeted(by_name[layer.name], view):
            added = True
        if new_edit_layer:
            new_state["layers"].append(edit_layer(layer))
            added = True
    return new_state, added


def frozen(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a session's state to share: without its edit layers and record (they are the session's own);
    a selected annotation of an edit layer becomes the same annotation of its view layer."""
    record = SessionAnnotations.of(state)
    view_names = {name: name.removesuffix(EDIT_SUFFIX) for name in record.edit_layers}
    copied = copy.deepcopy({key: value for key, value in state.items() if key != RECORD_KEY})
    copied["layers"] = [layer for layer in state_layers(copied) if layer.get("name") not in view_names]
    for layer in copied["layers"]:
        retargeted(layer, CURRENT)  # its edit layers are not shared: their annotations are
    selection = copied.get("selection")
    if isinstance(selection, dict) and isinstance(selection.get("layers"), dict):
        layers = {}
        for name, selected in selection["layers"].items():
            if name in view_names:
                annotation = selected.get("annotationId") if isinstance(selected, dict) else None
                saved = record.database_id(name, annotation) if isinstance(annotation, str) else None
                if saved is not None:
                    layers[view_names[name]] = {"annotationId": str(saved), "annotationSource": 0}
                continue
            layers[name] = selected
        selection["layers"] = layers
    chosen = copied.get("selectedLayer")
    if isinstance(chosen, dict) and chosen.get("layer") in view_names:
        chosen["layer"] = view_names[chosen["layer"]]
    return copied


# What the viewer drew


@dataclass(frozen=True, slots=True)
class Drawn:
    """One annotation of an edit layer as the viewer posted it: float32-exact geometry in nm."""

    id: str
    type: str
    geometry: tuple[float, ...]
    description: str

    def matches(self, geometry: Sequence[float] | None, description: str | None = None) -> bool:
        return geometry is not None and tuple(geometry) == self.geometry and (
            description is None or description == self.description)

    def annotation(self, current: AnnotationRecord | None = None) -> AnnotationIn:
        """As the store takes it; label, properties and segments of ``current`` are kept."""
        values = list(self.geometry)
        if self.type == "polyline":
            geometry: dict[str, Any] = {"points": [values[i:i + RANK] for i in range(0, len(values), RANK)]}
        else:
            geometry = {name: values[i * RANK:(i + 1) * RANK] for i, name in enumerate(GEOMETRY_FIELDS[self.type])}
        kept: dict[str, Any] = {}
        if current is not None:
            kept = {"label": current.label, "properties": current.properties, "segments": current.segments}
        return AnnotationIn.model_validate({"type": self.type, **geometry, "description": self.description, **kept})


def _float32(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} is not a finite number")
    return float(np.float32(value))


def _geometry(kind: str, item: dict[str, Any]) -> tuple[float, ...]:
    names = NG_GEOMETRY[kind]
    points = item.get("points") if kind == "polyline" else [item.get(name) for name in names]
    if not isinstance(points, list) or not points:
        raise ValueError(f"a {kind} without its {' and '.join(names)}")
    values: list[float] = []
    for point in points:
        if not isinstance(point, list) or len(point) != RANK:
            raise ValueError(f"a {kind} whose coordinates are not x, y, z")
        values += [_float32(v, "a coordinate") for v in point]
    return tuple(values)


def drawn_annotations(layer: dict[str, Any]) -> tuple[list[Drawn], list[str]] | None:
    """The annotations of an edit layer as posted, and what could not be read; None when the layer carries no
    annotation list (then nothing of it may be taken as deleted)."""
    items = layer.get("annotations")
    if not isinstance(items, list):
        return None
    found: list[Drawn] = []
    unreadable: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or item["id"] in seen:
            unreadable.append("an annotation without a usable id")
            continue
        kind = item.get("type")
        if kind not in TOOLS:
            unreadable.append(f"annotation {item['id'][:12]}: unknown type {str(kind)[:40]!r}")
            continue
        try:
            geometry = _geometry(kind, item)
        except ValueError as error:
            unreadable.append(f"annotation {item['id'][:12]}: {error}")
            continue
        description = item.get("description")
        description = description.replace("\x00", "")[:MAX_DESCRIPTION] if isinstance(description, str) else ""
        seen.add(item["id"])
        found.append(Drawn(item["id"], kind, geometry, description))
    return found, unreadable


@dataclass
class Changes:
    """What saving an edit layer takes: new annotations, existing ones taken for editing (``db-<id>``), changed
    ones (with what was saved before) and removed ones (their Neuroglancer ids)."""

    creates: list[Drawn] = field(default_factory=list)
    adoptions: list[tuple[Drawn, int]] = field(default_factory=list)
    changes: list[tuple[Drawn, SavedAnnotation]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # refused changes undone in the viewer: nothing to report

    def __bool__(self) -> bool:
        return bool(self.creates or self.adoptions or self.changes or self.deletes or self.resolved)


def diff(drawn: Iterable[Drawn], saved: dict[str, SavedAnnotation]) -> Changes:
    """What changed between an edit layer as drawn and what the session saved of it.

    A failed attempt is not repeated until the annotation changes again (a coordinate outside the layer stays
    outside until it is moved).
    """
    changes = Changes()
    present: set[str] = set()
    for item in drawn:
        present.add(item.id)
        before = saved.get(item.id)
        match = COPY_ID.fullmatch(item.id)
        if before is not None and before.tried is not None and item.matches(before.tried, before.tried_description):
            continue
        if before is None or before.id is None:
            if match is not None:
                changes.adoptions.append((item, int(match.group(1))))
            else:
                changes.creates.append(item)
        elif not item.matches(before.geometry, before.description):
            changes.changes.append((item, before))
        elif before.error is not None:
            changes.resolved.append(item.id)
    changes.deletes = [annotation_id for annotation_id in saved if annotation_id not in present]
    return changes
