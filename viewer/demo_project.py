"""The demo's Citizen Science project: volunteers mark the mitochondria of the demo volume.

Its gold-standard answers are the centres of the mitochondria the demo was drawn with (its ``organelles``
labels), on the middle slice of each gold task, so a volunteer's feedback is exact.
"""

from __future__ import annotations

import asyncio

import numpy as np
from scipy import ndimage
from sqlalchemy.orm import Session, sessionmaker

from annotations.access import Access, Actor
from annotations.annotation_store import AnnotationStore
from annotations.catalog import Catalog
from annotations.crowd import Crowd
from annotations.crowd_specs import GoldTaskIn, ProjectIn, TasksIn
from annotations.errors import ProjectNotFound
from tiling.demo import MITOCHONDRION_IDS
from tiling.omezarr import make_context, open_volume
from viewer.registration import DEMO_DATASET, DEMO_LABELS

DEMO_PROJECT = "demo-mitochondria"
TASK = [128, 128, 8]
TASK_Z = (124, 132)  # the slab of tasks: 16 tasks of 128 by 128 by 8 voxels
GOLD_Z = (100, 108)
GOLD_TASKS = 4  # the three regions richest in mitochondria, and one without any
MIN_AREA = 40  # pixels of a mitochondrion on the middle slice for the expert to mark it
OPERATOR = Actor(account_id=None, name="demo", role="admin", via="token")


def ensure_demo_project(sessions: sessionmaker[Session]) -> bool:
    """Make the demo's project unless it is there; True if it was made."""
    crowd = Crowd(sessions, AnnotationStore(sessions))
    access = Access(sessions).dataset_access(OPERATOR, DEMO_DATASET)
    try:
        crowd.project(OPERATOR, access, DEMO_PROJECT)
        return False
    except ProjectNotFound:
        pass
    labels = Catalog(sessions).get_image(DEMO_DATASET, DEMO_LABELS)
    crowd.create_project(OPERATOR, access, ProjectIn.model_validate({
        "name": DEMO_PROJECT, "title": "Find the mitochondria",
        "description": "Mark every mitochondrion you see in small regions of the demo volume. Each region is "
                       "shown to three volunteers; where they agree, a mitochondrion joins the consensus layer.",
        "image": "em",
        "workflow": {
            "instructions": "Ctrl+click the centre of every mitochondrion on the slice shown. If there is none, "
                            "press 'Nothing here'.",
            "tool": "point", "labels": ["mitochondrion"], "task_shape": TASK, "redundancy": 3,
            "tutorial": [
                {"text": "Mitochondria are the dark ovals with pale folds (cristae) inside; the large pale "
                         "areas are cells, the dark lines between them membranes.",
                 "picture": {"lower": [0, 0, 128], "upper": [256, 256, 129]}},
                {"text": "Click once near the centre of each one. Small round grey dots are vesicles: leave "
                         "them.", "picture": {"lower": [256, 256, 128], "upper": [384, 384, 129]}},
            ]}}))
    crowd.generate_tasks(OPERATOR, access, DEMO_PROJECT, TasksIn.model_validate(
        {"lower": [0, 0, TASK_Z[0]], "upper": [512, 512, TASK_Z[1]]}))
    middle = (GOLD_Z[0] + GOLD_Z[1] - 1) // 2
    plane = asyncio.run(_slice(labels.uri, middle))
    answers = {}
    for y0 in range(0, plane.shape[0] - TASK[1] + 1, TASK[1]):
        for x0 in range(0, plane.shape[1] - TASK[0] + 1, TASK[0]):
            region = plane[y0:y0 + TASK[1], x0:x0 + TASK[0]]
            answer = []
            for found in np.unique(region[region >= MITOCHONDRION_IDS]):
                mask = region == found
                if mask.sum() >= MIN_AREA:
                    y, x = ndimage.center_of_mass(mask)
                    answer.append({"type": "point", "point": [x0 + x + 0.5, y0 + y + 0.5, middle + 0.5],
                                   "label": "mitochondrion"})
            answers[(x0, y0)] = answer
    ranked = sorted(answers, key=lambda corner: (-len(answers[corner]), corner))
    chosen = [*ranked[:GOLD_TASKS - 1], ranked[-1]]
    for x0, y0 in chosen:
        answer = answers[(x0, y0)]
        crowd.add_gold(OPERATOR, access, DEMO_PROJECT, GoldTaskIn.model_validate({
            "lower": [x0, y0, GOLD_Z[0]], "upper": [x0 + TASK[0], y0 + TASK[1], GOLD_Z[1]], "answer": answer}))
    return True


async def _slice(uri: str, z: int) -> np.ndarray:
    volume = await open_volume(uri, make_context(64 << 20))
    return (await volume.read(0, (slice(z, z + 1), slice(None), slice(None))))[0, 0]
