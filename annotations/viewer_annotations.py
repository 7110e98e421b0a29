"""Database annotation layers in viewer sessions: what a viewer draws is saved as it is drawn.

Every state a session receives (Neuroglancer's state sync, or a PUT through the API) passes through
``receive``: the annotations of each edit layer (``annotations.viewer_layers``) are compared with what the
session last saved of them, and the differences are written through ``AnnotationStore`` as the session's
owner, whose rights the store enforces. What was saved, and what could not be, is recorded in the stored
state itself, in the same compare-and-set as the state, so that every server process reads the same record.
A change that cannot be saved (no right, a coordinate outside the layer, an annotation changed elsewhere
since) is kept in the viewer and reported, not tried again until it changes.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel

from annotations.access import Action, Actor, DatasetAccess, may
from annotations.annotation_store import AnnotationRecord, AnnotationStore
from annotations.errors import AnnotationNotFound, CatalogError, SharedViewNotFound, StaleGeneration
from annotations.layer_specs import GEOMETRY_FIELDS
from annotations.models import utcnow
from annotations.shared_views import SharedViewRecord, SharedViews
from annotations.viewer_layers import (
    EDIT_SUFFIX,
    RECORD_KEY,
    Changes,
    Drawn,
    EditLayerRecord,
    Problem,
    SavedAnnotation,
    SessionAnnotations,
    checked_state,
    diff,
    drawn_annotations,
    editing_view,
    frozen,
    new_view_key,
    retargeted,
    state_layers,
    with_database_layers,
    with_record,
)
from annotations.viewer_sessions import SessionState, ViewerSessions
from annotations.views import CURRENT

TYPE_NAMES = {"point": "point", "line": "line", "axis_aligned_bounding_box": "box", "ellipsoid": "ellipsoid",
              "polyline": "polyline"}


class SessionLayer(BaseModel):
    """A database layer as a session shows it: its view layer and, if the owner may annotate, its edit layer."""

    layer_id: int
    name: str  # the view layer (precomputed sources), named as the database layer
    edit_layer: str | None  # the local layer where the viewer draws into it


class UnsavedAnnotation(BaseModel):
    layer: str  # the edit layer
    annotation: str  # Neuroglancer's id of the annotation there
    annotation_id: int | None  # its database id, when an earlier version was saved
    message: str


class SessionAnnotationsOut(BaseModel):
    """What a session saves into the database layers: its layers, the database id of each annotation drawn in an
    edit layer, the drawn changes not saved (with why), and recent problems (newest last)."""

    layers: list[SessionLayer]
    saved: dict[str, dict[str, int]]  # edit layer -> Neuroglancer id -> database id
    unsaved: list[UnsavedAnnotation]
    problems: list[Problem]


class _Unchanged(Exception):
    """Abandons an ``update_state`` that has nothing to change."""


def flat_geometry(record: AnnotationRecord) -> list[float]:
    """A stored annotation's geometry as one flat list (as ``Drawn`` holds it)."""
    if record.type == "polyline":
        return [v for point in record.points or [] for v in point]
    return [v for name in GEOMETRY_FIELDS[record.type] for v in getattr(record, name) or []]


class ViewerAnnotations:
    """Database layers in viewer sessions, saving what is drawn (blocking; run in the database threads)."""

    def __init__(self, viewer_sessions: ViewerSessions, store: AnnotationStore, shared_views: SharedViews) -> None:
        self.viewer_sessions = viewer_sessions
        self.store = store
        self.shared_views = shared_views

    # Sessions and their layers

    def open_session(self, actor: Actor, access: DatasetAccess, origin: str, state: dict[str, Any],
                     config: dict[str, Any], view: str | None = None) -> SessionState:
        """A new session of ``actor`` on the dataset: ``state`` (or the shared view ``view`` of this dataset) with
        the dataset's annotation layers, and an edit layer for each when the actor may annotate."""
        if view is not None:
            shared = self.shared_views.get(view)
            if shared.dataset_id != access.id:
                raise SharedViewNotFound(f"no shared view {view!r} of dataset {access.name!r}")
            state = frozen(shared.state)
        record = SessionAnnotations()
        layers = self.store.layers(actor, access)
        view_key = new_view_key()
        state, _ = with_database_layers(state, record, origin, layers, may(actor, Action.ANNOTATE, access), view_key)
        return self.viewer_sessions.create(access.id, self._carry(state, record), config, actor.account_id,
                                           view_key=view_key)

    def show_layers(self, token: str, actor: Actor, access: DatasetAccess, origin: str) -> SessionAnnotationsOut:
        """Add the dataset's layers the session lacks (made since it opened); open viewers follow."""
        layers = self.store.layers(actor, access)
        editable = may(actor, Action.ANNOTATE, access)
        view_key = self.viewer_sessions.get(token).view_key

        def change(state: dict[str, Any]) -> dict[str, Any]:
            record = SessionAnnotations.of(state)
            new_state, added = with_database_layers(state, record, origin, layers, editable, view_key)
            if not added:
                raise _Unchanged
            return self._carry(new_state, record)

        with contextlib.suppress(_Unchanged):
            self.viewer_sessions.update_state(token, change)
        return self.report(token, actor, access)

    def report(self, token: str, actor: Actor, access: DatasetAccess | None) -> SessionAnnotationsOut:
        record = SessionAnnotations.of(self.viewer_sessions.get(token).state)
        edit_names = {entry.layer_id: name for name, entry in record.edit_layers.items()}
        layers = self.store.layers(actor, access) if access is not None else []
        unsaved = [UnsavedAnnotation(layer=name, annotation=ng_id, annotation_id=saved.id, message=saved.error)
                   for name, entry in record.edit_layers.items() for ng_id, saved in entry.saved.items()
                   if saved.error is not None]
        return SessionAnnotationsOut(
            layers=[SessionLayer(layer_id=layer.id, name=layer.name, edit_layer=edit_names.get(layer.id))
                    for layer in layers],
            saved={name: {ng_id: saved.id for ng_id, saved in entry.saved.items() if saved.id is not None}
                   for name, entry in record.edit_layers.items()},
            unsaved=unsaved, problems=record.problems)

    # Every new state

    def receive(self, token: str, actor: Actor, access: DatasetAccess | None, state: dict[str, Any], *,
                generation: str | None = None, expected: str | None = None) -> str:
        """Store a state a viewer (or a client of the API) sends, saving what its edit layers changed.

        With ``expected``, only if that is still the session's generation: StaleGeneration otherwise, before
        anything is saved; InvalidState for layers that are not layer objects. Returns the new generation.
        """
        state = checked_state(state)
        current = self.viewer_sessions.get(token)
        if expected is not None and current.generation != expected:
            raise StaleGeneration(f"session {token!r} has moved past generation {expected!r}")
        record = SessionAnnotations.of(current.state)
        wrote = retarget = False
        if access is not None and record.edit_layers:
            layers = {layer.get("name"): layer for layer in state_layers(state)}
            for name, entry in record.edit_layers.items():
                layer = layers.get(name)
                view = layers.get(name.removesuffix(EDIT_SUFFIX))
                if layer is None and view is not None:
                    # The edit layer was closed: its annotations are shown by the view layer again.
                    retarget = retargeted(view, CURRENT) or retarget
                parsed = drawn_annotations(layer) if layer is not None else None
                if parsed is None:  # the layer was removed or carries no list: nothing of it is taken as deleted
                    continue
                changes = diff(parsed[0], entry.saved)
                if changes:
                    self._save(actor, access, name, entry, changes, record)
                    wrote = True
                if changes.adoptions and view is not None:
                    # The viewer has its view layer's cells with the annotations just taken: a new URL makes it
                    # read them again, without them.
                    entry.view_revision += 1
                    retarget = retargeted(view, editing_view(current.view_key, entry.view_revision)) or retarget
        if retarget:
            generation = None  # a state the client does not have yet: a server generation, sent to it
        try:
            return self.viewer_sessions.set_state(token, self._carry(state, record), generation=generation,
                                                  expected=expected)
        except StaleGeneration:
            if wrote:
                self._note(token, "the view changed elsewhere while your last change was saved: it is in the "
                                  "layer, reload the page to see it")
            raise

    def share(self, token: str, actor: Actor, access: DatasetAccess) -> SharedViewRecord:
        """A frozen copy of the session's current view (without its edit layers), behind a new code."""
        current = self.viewer_sessions.get(token)
        return self.shared_views.create(access.id, frozen(current.state), actor.account_id)

    # Helpers

    @staticmethod
    def _carry(state: dict[str, Any], record: SessionAnnotations) -> dict[str, Any]:
        """``state`` with the session's record (or without the key, when there is nothing to record)."""
        if record.edit_layers or record.problems:
            return with_record(state, record)
        state.pop(RECORD_KEY, None)
        return state

    def _note(self, token: str, message: str, layer: str = "") -> None:
        def change(state: dict[str, Any]) -> dict[str, Any]:
            record = SessionAnnotations.of(state)
            record.report(layer, message, utcnow())
            return with_record(state, record)

        self.viewer_sessions.update_state(token, change)

    def _save(self, actor: Actor, access: DatasetAccess, name: str, entry: EditLayerRecord, changes: Changes,
              record: SessionAnnotations) -> None:
        """Apply one edit layer's changes through the store; ``entry`` and ``record`` learn the outcome."""
        layer_id = entry.layer_id

        def failed(item: Drawn, before: SavedAnnotation | None, what: str, error: Exception) -> None:
            message = f"{TYPE_NAMES[item.type]} {what}: {error}"
            base = before or SavedAnnotation(type=item.type, geometry=list(item.geometry),
                                             description=item.description)
            entry.saved[item.id] = base.model_copy(update={"error": message, "tried": list(item.geometry),
                                                           "tried_description": item.description})
            record.report(name, message, utcnow())

        def saved(item: Drawn, annotation_id: int) -> None:
            entry.saved[item.id] = SavedAnnotation(id=annotation_id, type=item.type, geometry=list(item.geometry),
                                                   description=item.description)

        for ng_id in changes.resolved:
            entry.saved[ng_id] = entry.saved[ng_id].model_copy(update={"error": None, "tried": None})
        # New annotations in one write (all or none); if that is refused, one at a time to tell which and why.
        creates = changes.creates
        if len(creates) > 1:
            try:
                created = self.store.create_many(actor, access, layer_id, [item.annotation() for item in creates])
            except (CatalogError, ValueError):  # one at a time below
                pass
            else:
                for item, annotation_id in zip(creates, created.ids, strict=True):
                    saved(item, annotation_id)
                creates = []
        for item in creates:
            try:
                one = self.store.create_many(actor, access, layer_id, [item.annotation()])
            except (CatalogError, ValueError) as error:
                failed(item, None, "not saved", error)
                continue
            saved(item, one.ids[0])
        pending = list(changes.changes)
        for item, annotation_id in changes.adoptions:
            try:
                current = self.store.get(actor, access, layer_id, annotation_id)
            except (CatalogError, ValueError) as error:
                failed(item, None, f"{annotation_id} cannot be edited", error)
                continue
            before = SavedAnnotation(id=annotation_id, type=current.type, geometry=flat_geometry(current),
                                     description=current.description)
            entry.saved[item.id] = before
            if not item.matches(before.geometry, before.description):
                pending.append((item, before))
        for item, before in pending:
            assert before.id is not None
            try:
                current = self.store.get(actor, access, layer_id, before.id)
                if flat_geometry(current) != before.geometry:
                    raise CatalogError("it was changed elsewhere since this viewer saved it; reload the page "
                                       "to edit its current version")
                self.store.update(actor, access, layer_id, before.id, item.annotation(current))
            except (CatalogError, ValueError) as error:
                failed(item, before, f"{before.id} not changed", error)
                continue
            saved(item, before.id)
        for ng_id in changes.deletes:
            gone = entry.saved.pop(ng_id)
            if gone.id is None:
                continue
            try:
                self.store.delete(actor, access, layer_id, gone.id)
            except AnnotationNotFound:
                pass  # deleted already, elsewhere
            except CatalogError as error:
                record.report(name, f"{TYPE_NAMES.get(gone.type, gone.type)} {gone.id} not deleted: {error} "
                                    "(it stays in the layer)", utcnow())
