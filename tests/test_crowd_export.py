"""Citizen-science submissions exported as Zooniverse's classification export (``annotations.crowd_export``),
read back by Zooniverse's own aggregation code: panoptes-aggregation's command line (``config``, ``extract``,
``reduce``, run in this process through its own argument parser) configures a points workflow from a workflow
export shaped like Zooniverse's, reads our CSV with its own CSV code, extracts the clicks by frame and clusters
them (DBSCAN), and the clusters' centres and sizes land on the known centres. Boxes and outlines go through its
rectangle and polygon extractors the same way. Plus the columns, the JSON columns and no personal data."""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import io
import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from panoptes_aggregation.scripts import aggregation_parser

from annotations.crowd_export import COLUMNS, ExportMark, ExportSubmission, zooniverse_classifications

ZOONIVERSE_COLUMNS = ["classification_id", "user_name", "user_id", "user_ip", "workflow_id", "workflow_name",
                      "workflow_version", "created_at", "gold_standard", "expert", "metadata", "annotations",
                      "subject_data", "subject_ids"]
# Zooniverse's workflow export, as panoptes-aggregation's `config` command reads it
WORKFLOW_COLUMNS = ["workflow_id", "display_name", "version", "active", "classifications_count", "pairwise",
                    "grouped", "prioritized", "primary_language", "first_task", "tutorial_subject_id",
                    "retired_set_member_subjects_count", "tasks", "retirement", "aggregation", "strings",
                    "minor_version"]
SALT = b"per-deployment secret salt"
LABELS = ["mitochondrion", "synapse"]
WORKFLOW_ID = 7
VERSION = 2
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
VOXEL_NM = [8.0, 8.0, 30.0]
# Who takes part, as the server knows them: anonymous browsers by their cookie id, accounts by id and name.
# None of this may reach the export.
VOLUNTEERS = [
    {"raw": "browser-5b0e6c1e-8d0c-4c55-a8a3-2f4b51d4e9a1", "signed_in": False},
    {"raw": "browser-d2a4f9e0-31c7-4e8b-9b61-0c8e7f2a5d33", "signed_in": False},
    {"raw": "browser-77c1a0b2-9e44-4f1d-bb25-6a3d9c0e1f48", "signed_in": False},
    {"raw": "account-4711", "name": "Ada Lovelace", "email": "ada@example.org", "signed_in": True},
    {"raw": "account-4712", "name": "grace.hopper", "email": "grace@example.org", "signed_in": True},
    {"raw": "browser-0f9e8d7c-6b5a-4493-8271-605f4e3d2c1b", "signed_in": False},
]
# Single-slice tasks: (task id, region lower corner, the known centres per label, in pixels of the region)
TASKS = [
    (201, [4096, 2048, 100], {"mitochondrion": [(30.5, 40.5), (90.5, 100.5)], "synapse": [(70.5, 20.5)]}),
    (202, [4224, 2048, 100], {"mitochondrion": [(64.5, 64.5)], "synapse": []}),
    (203, [0, 0, 7], {"mitochondrion": [], "synapse": [(15.5, 110.5), (100.5, 15.5)]}),
]
SIZE = [128, 128, 1]
NOTHING_HERE = (5, 202)  # volunteer 5 sees nothing in task 202
MISSED = (4, 201, "synapse")  # volunteer 4 misses the synapse of task 201
STRAY = (3, 203, "synapse", (60.0, 60.0))  # volunteer 3 clicks once where nothing is


def volunteer_hash(raw: str) -> str:
    """As the server hashes a volunteer for an export: salted SHA-256, hex."""
    return hashlib.sha256(SALT + raw.encode()).hexdigest()


def submission(sid: int, v: int, task: int, lower: list[int], marks: list[ExportMark], *, nothing_here: bool = False,
               upper: list[int] | None = None, labels: list[str] | None = None, gold: bool = False,
               workflow_id: int = WORKFLOW_ID, workflow_name: str = "Mitochondria and synapses") -> ExportSubmission:
    created = START + timedelta(minutes=sid)
    return ExportSubmission(
        id=sid, volunteer=volunteer_hash(VOLUNTEERS[v]["raw"]), signed_in=VOLUNTEERS[v]["signed_in"],
        project="Mouse cortex organelles", workflow_id=workflow_id, workflow_name=workflow_name,
        workflow_version=VERSION, created_at=created, task_id=task, gold=gold, dataset="mouse-cortex",
        image="fib-sem", region_lower=lower, region_upper=upper or [lo + n for lo, n in zip(lower, SIZE, strict=True)],
        voxel_size_nm=VOXEL_NM, labels=labels or LABELS, nothing_here=nothing_here, marks=marks,
        started_at=created - timedelta(seconds=95), user_agent_family="Firefox")


def points_workflow() -> tuple[list[ExportSubmission], dict[tuple[int, str, tuple[float, float]], int]]:
    """Every volunteer's clicks (jittered by a pixel or so) on every task; and how many clicked each centre."""
    rng = random.Random(18)
    rows: list[ExportSubmission] = []
    clicked: dict[tuple[int, str, tuple[float, float]], int] = {}
    for v in range(len(VOLUNTEERS)):
        for task, lower, centres in TASKS:
            if (v, task) == NOTHING_HERE:
                rows.append(submission(len(rows) + 1, v, task, lower, [], nothing_here=True))
                continue
            marks = []
            for label, points in centres.items():
                if (v, task, label) == MISSED:
                    continue
                for centre in points:
                    clicked[task, label, centre] = clicked.get((task, label, centre), 0) + 1
                    x, y = (c + rng.gauss(0, 1.0) for c in centre)
                    marks.append(ExportMark("point", label, [lower[0] + x, lower[1] + y, lower[2] + 0.5]))
            if (v, task) == STRAY[:2]:
                x, y = STRAY[3]
                marks.append(ExportMark("point", STRAY[2], [lower[0] + x, lower[1] + y, lower[2] + 0.5]))
            rng.shuffle(marks)
            rows.append(submission(len(rows) + 1, v, task, lower, marks))
    return rows, clicked


def export(rows: list[ExportSubmission]) -> str:
    out = io.StringIO()
    assert zooniverse_classifications(rows, out) == len(rows)
    return out.getvalue()


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def write_workflow(path: Path, tool: str, labels: list[str], workflow_id: int = WORKFLOW_ID) -> None:
    """A workflow export as Zooniverse's (one drawing task T0, one tool per label), for `config` to read."""
    tasks = {"T0": {"help": "T0.help", "type": "drawing", "instruction": "T0.instruction",
                    "tools": [{"type": tool, "label": f"T0.tools.{i}.label", "details": []}
                              for i in range(len(labels))]}}
    strings = {"T0.help": "", "T0.instruction": "Mark each one",
               **{f"T0.tools.{i}.label": label for i, label in enumerate(labels)}}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(WORKFLOW_COLUMNS)
        writer.writerow([workflow_id, "Lamella workflow", VERSION, "true", 0, "false", "false", "false", "en", "T0",
                         "", 0, json.dumps(tasks), json.dumps({"criteria": "classification_count", "options":
                                                               {"count": 6}}), "{}", json.dumps(strings), 1])


def panoptes(*args: str | Path) -> None:
    """panoptes-aggregation's command line, in this process (its `main` takes the arguments)."""
    assert aggregation_parser.main([str(a) for a in args]) == 0


def configure(tmp: Path, tool: str, labels: list[str], workflow_id: int = WORKFLOW_ID) -> tuple[Path, list[Path]]:
    """`panoptes_aggregation config` on a workflow export: the extractor config and the reducer configs."""
    write_workflow(tmp / "workflows.csv", tool, labels, workflow_id)
    panoptes("config", tmp / "workflows.csv", workflow_id, "-d", tmp)
    extractor = tmp / f"Extractor_config_workflow_{workflow_id}_V{VERSION}.1.yaml"
    assert extractor.exists()
    return extractor, sorted(tmp.glob(f"Reducer_config_workflow_{workflow_id}_*.yaml"))


def extract(tmp: Path, classifications: str, extractor: Path, name: str) -> list[dict[str, str]]:
    """`panoptes_aggregation extract` on our CSV: the rows of its one extraction file."""
    (tmp / "classifications.csv").write_text(classifications, encoding="utf-8")
    panoptes("extract", tmp / "classifications.csv", extractor, "-d", tmp, "-o", "ours", "-hb")
    return read_rows((tmp / f"{name}_ours.csv").read_text(encoding="utf-8"))


def cell(row: dict[str, str], key: str) -> Any:
    """A list that panoptes-aggregation wrote into a CSV cell (Python literals); empty when there is none."""
    text = row.get(key, "")
    return ast.literal_eval(text) if text else []


@pytest.fixture(scope="module")
def points() -> tuple[list[ExportSubmission], dict[tuple[int, str, tuple[float, float]], int], str]:
    rows, clicked = points_workflow()
    return rows, clicked, export(rows)


def test_columns_and_json(points: tuple[list[ExportSubmission], Any, str]) -> None:
    rows, _, text = points
    assert text.splitlines()[0].split(",") == ZOONIVERSE_COLUMNS == list(COLUMNS)
    exported = read_rows(text)
    assert len(exported) == len(rows)
    for sub, row in zip(rows, exported, strict=True):
        assert row["classification_id"] == str(sub.id)
        assert row["workflow_id"] == str(WORKFLOW_ID) and row["workflow_name"] == sub.workflow_name
        assert row["workflow_version"] == f"{VERSION}.1"
        assert row["created_at"] == sub.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row["created_at"])
        assert row["gold_standard"] == row["expert"] == ""
        assert row["subject_ids"] == str(sub.task_id)
        metadata = json.loads(row["metadata"])
        assert metadata["started_at"] == (sub.created_at - timedelta(seconds=95)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert metadata["finished_at"] == sub.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert metadata["workflow_version"] == VERSION and metadata["nothing_here"] == sub.nothing_here
        assert metadata["user_agent_family"] == "Firefox"
        assert metadata["subject_dimensions"] == [{"naturalWidth": 128, "naturalHeight": 128}]
        assert json.loads(row["subject_data"]) == {str(sub.task_id): {
            "project": "Mouse cortex organelles", "dataset": "mouse-cortex", "image": "fib-sem",
            "region_lower": sub.region_lower, "region_upper": sub.region_upper, "voxel_size_nm": VOXEL_NM,
            "#gold_standard": False}}
        [annotation] = json.loads(row["annotations"])
        assert annotation["task"] == "T0" and annotation["task_label"] == sub.workflow_name
        assert len(annotation["value"]) == len(sub.marks)
        for mark, value in zip(sub.marks, annotation["value"], strict=True):
            assert list(value) == ["x", "y", "tool", "frame", "details", "tool_label"]
            assert value["x"] == pytest.approx(mark.voxels[0] - sub.region_lower[0])
            assert value["y"] == pytest.approx(mark.voxels[1] - sub.region_lower[1])
            assert value["frame"] == 0 and value["details"] == []
            assert value["tool"] == LABELS.index(mark.label) and value["tool_label"] == mark.label
    nothing = [row for row, sub in zip(exported, rows, strict=True) if sub.nothing_here]
    assert len(nothing) == 1 and json.loads(nothing[0]["annotations"])[0]["value"] == []


def test_no_personal_data(points: tuple[list[ExportSubmission], Any, str]) -> None:
    rows, _, text = points
    for person in VOLUNTEERS:
        for key in ("raw", "name", "email"):
            if key in person:
                assert person[key] not in text
        if person["raw"].startswith("browser-"):
            assert person["raw"].removeprefix("browser-") not in text  # nor the bare cookie id
    exported = read_rows(text)
    assert {row["user_ip"] for row in exported} == {""}
    for sub, row in zip(rows, exported, strict=True):
        if sub.signed_in:
            assert row["user_name"] == row["user_id"] == sub.volunteer
        else:
            assert row["user_name"] == f"not-logged-in-{sub.volunteer}" and row["user_id"] == ""
    assert {row["user_name"] for row in exported} == {
        volunteer_hash(p["raw"]) if p["signed_in"] else f"not-logged-in-{volunteer_hash(p['raw'])}"
        for p in VOLUNTEERS}
    # a real id or name is refused rather than written
    lower = TASKS[0][1]
    for raw in ("ada@example.org", "Ada Lovelace", "4711", "account-4711", "ABCDEF0123456789ABCDEF"):
        bad = dataclasses.replace(submission(1, 0, 201, lower, []), volunteer=raw)
        with pytest.raises(ValueError, match="submission 1: the volunteer must be a hash"):
            export([bad])


def test_panoptes_aggregation_clusters_the_clicks(points: tuple[list[ExportSubmission], Any, str],
                                                  tmp_path: Path) -> None:
    rows, clicked, text = points
    extractor, reducer_configs = configure(tmp_path, "point", LABELS)
    assert "point_extractor_by_frame" in extractor.read_text()
    [dbscan] = reducer_configs
    assert "point_reducer_dbscan" in dbscan.read_text()
    extracted = extract(tmp_path, text, extractor, "point_extractor_by_frame")
    # every classification was read (a row panoptes-aggregation cannot parse is dropped from the extraction)
    assert sorted(int(row["classification_id"]) for row in extracted) == [sub.id for sub in rows]
    assert {row["subject_id"] for row in extracted} == {str(task) for task, _, _ in TASKS}
    # the reducer as `config` configured it: DBSCAN, eps 5 px, min_samples 3
    panoptes("reduce", tmp_path / "point_extractor_by_frame_ours.csv", dbscan, "-d", tmp_path, "-o", "ours", "-hb")
    reductions = read_rows((tmp_path / "point_reducer_dbscan_ours.csv").read_text(encoding="utf-8"))
    reduced = {int(row["subject_id"]): row for row in reductions}
    assert set(reduced) == {task for task, _, _ in TASKS}
    for task, _, centres in TASKS:
        row = reduced[task]
        assert not [key for key in row if "frame" in key and not key.startswith("data.frame0.")]
        for tool, label in enumerate(LABELS):
            key = f"data.frame0.T0_tool{tool}"
            xs, ys = cell(row, f"{key}_clusters_x"), cell(row, f"{key}_clusters_y")
            counts = cell(row, f"{key}_clusters_count")
            assert len(xs) == len(ys) == len(counts) == len(centres[label]), (task, label)
            for centre in centres[label]:
                nearest = min(range(len(xs)), key=lambda i, c=centre: (xs[i] - c[0]) ** 2 + (ys[i] - c[1]) ** 2)
                assert xs[nearest] == pytest.approx(centre[0], abs=1.5), (task, label, centre)
                assert ys[nearest] == pytest.approx(centre[1], abs=1.5), (task, label, centre)
                assert counts[nearest] == clicked[task, label, centre], (task, label, centre)
    stray = cell(reduced[STRAY[1]], f"data.frame0.T0_tool{LABELS.index(STRAY[2])}_cluster_labels")
    assert stray.count(-1) == 1  # the stray click is in no cluster
    assert clicked[201, "synapse", (70.5, 20.5)] == len(VOLUNTEERS) - 1
    assert clicked[202, "mitochondrion", (64.5, 64.5)] == len(VOLUNTEERS) - 1


VOLUME_LOWER = [1024, 1024, 32]
VOLUME_UPPER = [1536, 1536, 48]  # a 512 x 512 x 16 task region
BOX_LABELS = ["nucleus", "cell body"]


def test_boxes_as_rectangles(tmp_path: Path) -> None:
    rows = [
        submission(1, 0, 301, VOLUME_LOWER, [ExportMark("box", "nucleus", [1100.0, 1200.0, 35.0, 1140.0, 1230.0, 41.0]),
                                             ExportMark("box", "cell body", [1300, 1400, 47, 1250, 1380, 44])],
                   upper=VOLUME_UPPER, labels=BOX_LABELS, gold=True, workflow_id=8, workflow_name="Boxes"),
        submission(2, 3, 301, VOLUME_LOWER, [], nothing_here=True, upper=VOLUME_UPPER, labels=BOX_LABELS,
                   gold=True, workflow_id=8, workflow_name="Boxes"),
    ]
    text = export(rows)
    row = read_rows(text)[0]
    assert json.loads(row["subject_data"])["301"]["#gold_standard"] is True
    assert row["gold_standard"] == ""  # a volunteer's answer to a gold task is not a reference answer
    assert json.loads(row["metadata"])["subject_dimensions"] == [{"naturalWidth": 512, "naturalHeight": 512}] * 16
    [annotation] = json.loads(row["annotations"])
    assert annotation["value"] == [
        {"x": 76.0, "y": 176.0, "width": 40.0, "height": 30.0, "tool": 0, "frame": 3, "z": 3.0, "depth": 6.0,
         "details": [], "tool_label": "nucleus"},
        {"x": 226.0, "y": 356.0, "width": 50.0, "height": 20.0, "tool": 1, "frame": 12, "z": 12.0, "depth": 3.0,
         "details": [], "tool_label": "cell body"},
    ]
    extractor, _ = configure(tmp_path, "rectangle", BOX_LABELS, workflow_id=8)
    [extract_row, nothing] = extract(tmp_path, text, extractor, "shape_extractor_rectangle")
    assert (cell(extract_row, "data.frame3.T0_tool0_x"), cell(extract_row, "data.frame3.T0_tool0_y"),
            cell(extract_row, "data.frame3.T0_tool0_width"), cell(extract_row, "data.frame3.T0_tool0_height")) == (
        [76.0], [176.0], [40.0], [30.0])
    assert cell(extract_row, "data.frame12.T0_tool1_width") == [50.0]
    assert nothing["classification_id"] == "2" and not cell(nothing, "data.frame3.T0_tool0_x")


def test_outlines_as_polygons(tmp_path: Path) -> None:
    outline = [1100.0, 1100.0, 1150.0, 1100.0, 1150.0, 1160.0, 1100.0, 1160.0]
    rows = [submission(1, 1, 302, VOLUME_LOWER, [ExportMark("outline", "cell body", outline, z=40.5)],
                       upper=VOLUME_UPPER, labels=BOX_LABELS, workflow_id=9, workflow_name="Outlines")]
    text = export(rows)
    [annotation] = json.loads(read_rows(text)[0]["annotations"])
    points = [{"x": 76.0, "y": 76.0}, {"x": 126.0, "y": 76.0}, {"x": 126.0, "y": 136.0}, {"x": 76.0, "y": 136.0}]
    assert annotation["value"] == [
        {"points": points, "tool": 1, "frame": 8, "details": [], "tool_label": "cell body"}]
    extractor, _ = configure(tmp_path, "polygon", BOX_LABELS, workflow_id=9)
    [extract_row] = extract(tmp_path, text, extractor, "polygon_extractor")
    assert cell(extract_row, "data.frame8.T0_tool1_pathX") == [[p["x"] for p in points]]
    assert cell(extract_row, "data.frame8.T0_tool1_pathY") == [[p["y"] for p in points]]


@pytest.mark.parametrize(("change", "message"), [
    ({"nothing_here": True}, '"nothing here" with marks'),
    ({"marks": [ExportMark("point", "vesicle", [4100.0, 2050.0, 100.5])]}, "label 'vesicle' is not one"),
    ({"marks": [ExportMark("point", "synapse", [4100.0, 2050.0])]}, "a point needs x y z"),
    ({"marks": [ExportMark("box", "synapse", [1, 2, 3, 4, 5])]}, "a box needs"),
    ({"marks": [ExportMark("outline", "synapse", [1, 2, 3, 4, 5, 6])]}, "an outline needs its slice"),
    ({"marks": [ExportMark("outline", "synapse", [1, 2, 3, 4], z=100)]}, "three points or more"),
    ({"marks": [ExportMark("line", "synapse", [1, 2, 3])]}, "unknown tool 'line'"),
    ({"marks": [ExportMark("point", "synapse", [float("nan"), 2050.0, 100.5])]}, "not a finite number"),
])
def test_refusals(change: dict[str, Any], message: str) -> None:
    good = submission(5, 0, 201, TASKS[0][1], [ExportMark("point", "synapse", [4100.0, 2050.0, 100.5])])
    export([good])
    with pytest.raises(ValueError, match=f"^submission 5: .*{re.escape(message)}"):
        export([dataclasses.replace(good, **change)])


def test_no_rows_is_a_header() -> None:
    out = io.StringIO()
    assert zooniverse_classifications(iter(()), out) == 0
    assert out.getvalue() == ",".join(ZOONIVERSE_COLUMNS) + "\n"
