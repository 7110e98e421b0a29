"""Citizen-science submissions exported as Zooniverse's classification export, a CSV that Zooniverse's own
aggregation code (panoptes-aggregation: ``panoptes_aggregation extract`` and ``reduce``) reads as it is.
Pure code: the rows come in as ``ExportSubmission`` values, the CSV goes out to a text stream.

One row per submission, with Zooniverse's columns in Zooniverse's order (``COLUMNS``):

``classification_id``
    the submission's id.
``user_name``, ``user_id``, ``user_ip``
    no personal data. ``volunteer`` is already a salted hash (hex, checked: anything else is refused, so a
    real id or name cannot slip through). An anonymous volunteer is ``not-logged-in-<hash>`` with an empty
    user_id, as Zooniverse names them; a signed-in one is named by the hash, and the hash is their user_id.
    user_ip is always empty (Zooniverse puts a hash of the address there; we keep none).
``workflow_id``, ``workflow_name``, ``workflow_version``
    our workflow version N is written ``N.1``: Zooniverse versions are ``major.minor``, a change of tasks (our
    label set) is a major version, and minor versions start at 1. panoptes-aggregation's extraction reads a
    configured ``N`` or ``N.0`` as "from N.0 up to N+1, inclusive", so rows written ``N+1.0`` would be taken
    in with version N's; ``N.1`` never is.
``created_at``
    when it was submitted, in UTC, as Zooniverse writes it: ``2024-02-23 16:17:42 UTC``.
``gold_standard``, ``expert``
    empty. In Zooniverse, gold_standard marks the project team's reference answers, never a volunteer's; a
    volunteer's answer to one of our gold-standard tasks says so in its subject data (``#gold_standard``).
``metadata``
    JSON: ``source`` ("lamella"), ``started_at`` (when known) and ``finished_at`` (``created_at``) as
    ``2024-02-23T16:16:35.085Z``, ``workflow_version`` (ours, the integer), ``nothing_here``,
    ``user_agent_family`` (coarse, when known) and ``subject_dimensions`` (one entry per slice of the task
    region, ``naturalWidth`` by ``naturalHeight`` pixels, as Zooniverse lists a subject's frames).
``annotations``
    JSON: one drawing task, ``T0``, whose ``task_label`` is the workflow's name and whose ``value`` lists the
    marks (below); "nothing here" is an empty list.
``subject_data``
    JSON keyed by the subject id (the task's id, as text): ``project``, ``dataset``, ``image``,
    ``region_lower`` and ``region_upper`` (voxels of the image, x y z, upper exclusive), ``voxel_size_nm``
    (x y z) and ``#gold_standard`` (a ``#`` field is hidden from volunteers in Zooniverse's convention).
``subject_ids``
    the task's id.

The task region is the subject: a stack of ``depth`` images of ``width`` by ``height`` pixels (the region's
size in voxels), one frame per slice. A mark's x and y become pixels of that image, ``x - region_lower[0]``
and ``y - region_lower[1]`` (continuous: voxel i covers [i, i+1), so a click in its middle is i + 0.5); its
slice becomes the frame, ``floor(z) - region_lower[2]``. Zooniverse's tools are the workflow's labels:
``tool`` is the label's index in ``labels`` and ``tool_label`` the label (a workflow has one kind of tool).
Every mark has ``"details": []``.

point (x y z)
    the point tool: ``{"x", "y", "tool", "frame", "details", "tool_label"}``.
box (x0 y0 z0 x1 y1 z1)
    the rectangle tool on the box's first slice: ``x`` and ``y`` its low corner, ``width`` and ``height``,
    ``frame`` from its lower z; the third dimension in two fields Zooniverse does not have: ``z`` (the lower
    z within the region, continuous) and ``depth`` (its extent in z, voxels).
outline (x y x y ..., on slice ``z``)
    the polygon tool: ``points`` a list of ``{"x", "y"}`` (closed: the first point is not repeated at the
    end; panoptes-aggregation closes polygons itself), ``frame`` the outline's slice.

panoptes-aggregation's ``config`` command makes its extractor and reducer configurations from Zooniverse's
workflow export; the one matching this export has one drawing task ``T0`` with one tool per label, in the
label set's order (type ``point``, ``rectangle`` or ``polygon``), version N and minor version 1
(tests/test_crowd_export.py writes one).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

COLUMNS = ("classification_id", "user_name", "user_id", "user_ip", "workflow_id", "workflow_name",
           "workflow_version", "created_at", "gold_standard", "expert", "metadata", "annotations",
           "subject_data", "subject_ids")
TASK = "T0"  # the one drawing task of a workflow
ANONYMOUS_PREFIX = "not-logged-in-"
VOLUNTEER_HASH = re.compile(r"[0-9a-f]{16,128}")
TOOLS = ("point", "outline", "box")


@dataclass(frozen=True)
class ExportMark:
    tool: str  # "point" | "outline" | "box"
    label: str
    voxels: list[float]  # point: x y z; box: x0 y0 z0 x1 y1 z1; outline: x y x y ... (on slice z of `z`)
    z: float | None = None  # outline: its slice (voxel z)


@dataclass(frozen=True)
class ExportSubmission:
    id: int
    volunteer: str  # already a salted hash (hex), never a real id or name
    signed_in: bool
    project: str  # project name
    workflow_id: int
    workflow_name: str
    workflow_version: int
    created_at: datetime  # UTC
    task_id: int
    gold: bool
    dataset: str
    image: str
    region_lower: list[int]  # task region, voxels of the image, x y z (inclusive)
    region_upper: list[int]  # exclusive
    voxel_size_nm: list[float]  # x y z
    labels: list[str]  # the workflow version's label set, in order (Zooniverse "tools" are indices into it)
    nothing_here: bool
    marks: list[ExportMark]
    started_at: datetime | None = None
    user_agent_family: str | None = None  # coarse only, or None


def zooniverse_classifications(rows: Iterable[ExportSubmission], out: TextIO) -> int:
    """Write ``rows`` to ``out`` as Zooniverse's classification export (see the module's docstring); the count.

    A row that cannot be written faithfully (a volunteer that is not a hash, a mark of the wrong size or with a
    label outside the workflow's, marks on a "nothing here" answer, a number that is not finite) raises
    ``ValueError`` naming the submission, before anything of that row is written.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(classification_row(row))
        count += 1
    return count


def classification_row(sub: ExportSubmission) -> list[str]:
    """One submission as the values of ``COLUMNS``."""
    try:
        return _row(sub)
    except ValueError as error:
        raise ValueError(f"submission {sub.id}: {error}") from None


def _row(sub: ExportSubmission) -> list[str]:
    if not VOLUNTEER_HASH.fullmatch(sub.volunteer):
        raise ValueError("the volunteer must be a hash (16 to 128 lowercase hex digits)")
    if len(sub.region_lower) != 3 or len(sub.region_upper) != 3 or len(sub.voxel_size_nm) != 3:
        raise ValueError("the region's corners and the voxel size need x y z")
    if sub.nothing_here and sub.marks:
        raise ValueError('"nothing here" with marks')
    width, height, depth = (int(hi) - int(lo) for lo, hi in zip(sub.region_lower, sub.region_upper, strict=True))
    if min(width, height, depth) <= 0:
        raise ValueError("the task region is empty")
    version = zooniverse_version(sub.workflow_version)
    metadata: dict[str, Any] = {"source": "lamella"}
    if sub.started_at is not None:
        metadata["started_at"] = iso_time(sub.started_at)
    metadata["finished_at"] = iso_time(sub.created_at)
    metadata["workflow_version"] = sub.workflow_version
    metadata["nothing_here"] = sub.nothing_here
    if sub.user_agent_family is not None:
        metadata["user_agent_family"] = sub.user_agent_family
    metadata["subject_dimensions"] = [{"naturalWidth": width, "naturalHeight": height}] * depth
    annotations = [{"task": TASK, "task_label": sub.workflow_name,
                    "value": [mark_value(mark, sub.labels, sub.region_lower) for mark in sub.marks]}]
    subject = str(sub.task_id)
    subject_data = {subject: {
        "project": sub.project, "dataset": sub.dataset, "image": sub.image,
        "region_lower": [int(v) for v in sub.region_lower], "region_upper": [int(v) for v in sub.region_upper],
        "voxel_size_nm": [float(v) for v in sub.voxel_size_nm],
        "#gold_standard": sub.gold,
    }}
    anonymous = not sub.signed_in
    return [
        str(sub.id),
        f"{ANONYMOUS_PREFIX}{sub.volunteer}" if anonymous else sub.volunteer,
        "" if anonymous else sub.volunteer,
        "",
        str(sub.workflow_id),
        sub.workflow_name,
        version,
        utc(sub.created_at).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "",
        "",
        dumps(metadata),
        dumps(annotations),
        dumps(subject_data),
        subject,
    ]


def mark_value(mark: ExportMark, labels: list[str], lower: list[int]) -> dict[str, Any]:
    """One mark as a Zooniverse drawing-tool value, in pixels of the task region (see the module's docstring)."""
    if mark.tool not in TOOLS:
        raise ValueError(f"unknown tool {mark.tool!r}")
    if mark.label not in labels:
        raise ValueError(f"label {mark.label!r} is not one of the workflow's")
    tool = labels.index(mark.label)
    v = [float(n) for n in mark.voxels]
    if not all(math.isfinite(n) for n in v) or (mark.z is not None and not math.isfinite(mark.z)):
        raise ValueError(f"a {mark.tool} has a coordinate that is not a finite number")
    lx, ly, lz = (float(n) for n in lower)
    value: dict[str, Any]
    if mark.tool == "point":
        if len(v) != 3:
            raise ValueError("a point needs x y z")
        value = {"x": v[0] - lx, "y": v[1] - ly, "tool": tool, "frame": frame(v[2], lz)}
    elif mark.tool == "box":
        if len(v) != 6:
            raise ValueError("a box needs x0 y0 z0 x1 y1 z1")
        z0 = min(v[2], v[5])
        value = {"x": min(v[0], v[3]) - lx, "y": min(v[1], v[4]) - ly,
                 "width": abs(v[3] - v[0]), "height": abs(v[4] - v[1]),
                 "tool": tool, "frame": frame(z0, lz), "z": z0 - lz, "depth": abs(v[5] - v[2])}
    else:
        if mark.z is None or len(v) < 6 or len(v) % 2:
            raise ValueError("an outline needs its slice z and three points or more (x y x y ...)")
        value = {"points": [{"x": x - lx, "y": y - ly} for x, y in zip(v[0::2], v[1::2], strict=True)],
                 "tool": tool, "frame": frame(mark.z, lz)}
    value["details"] = []
    value["tool_label"] = mark.label
    return value


def frame(z: float, lower_z: float) -> int:
    """The frame (slice within the task region) of voxel z: voxel k covers [k, k+1)."""
    return math.floor(z) - int(lower_z)


def zooniverse_version(version: int) -> str:
    """Our workflow version as Zooniverse's ``major.minor`` (see the module's docstring)."""
    return f"{int(version)}.1"


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso_time(moment: datetime) -> str:
    """As Zooniverse's classification metadata writes times: ``2024-02-23T16:16:35.085Z``."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc(moment).microsecond // 1000:03d}Z"


def dumps(value: Any) -> str:
    """Compact JSON as in Zooniverse's exports; NaN and infinities are refused."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
