"""Citizen Science consensus (annotations/consensus.py): simulated volunteers around known truth, synthetic and
from the FlyEM medulla ground truth in ../shared/data, tiny hand cases, scores and volunteer quality."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import measure

from annotations.consensus import (
    BoxMark,
    ConsensusPoint,
    OutlineMark,
    PointMark,
    SliceGrid,
    agreement_with,
    box_consensus,
    outline_consensus,
    outline_mask,
    point_consensus,
    score_boxes,
    score_outlines,
    score_points,
    volunteer_quality,
)

FLY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fibsem_drosophila_medulla_250cube_neuroproof"
FLY_NM = 10.0  # isotropic voxel size of the FlyEM cube
SPAMMER = 99
# Timings are this process's CPU seconds, so that other work on a shared machine does not fail them.


def fly_bodies() -> Path:
    path = FLY / "groundtruth_bodies_uint32_zyx.tif"
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only on development and CI machines)")
    return path


def spread_out(rng: np.random.Generator, count: int, low: np.ndarray, high: np.ndarray, apart: float) -> np.ndarray:
    """``count`` uniform random points in the box at least ``apart`` from each other."""
    points: list[np.ndarray] = []
    while len(points) < count:
        candidate = rng.uniform(low, high)
        if all(np.linalg.norm(candidate - p) >= apart for p in points):
            points.append(candidate)
    return np.array(points)


def click(rng: np.random.Generator, centre: np.ndarray, sigma: np.ndarray, voxel: np.ndarray) -> tuple[float, ...]:
    """Where a volunteer clicks: the centre with Gaussian error, on the voxel grid (z on a slice)."""
    return tuple(float(v) for v in np.round((centre + rng.normal(0, sigma)) / voxel) * voxel)


def simulate_points(rng: np.random.Generator, truth: np.ndarray, labels: list[str], volunteers: range, *,
                    sigma: np.ndarray, voxel: np.ndarray, low: np.ndarray, high: np.ndarray, miss: float = 0.2,
                    double: float = 0.1, strays: int = 3, mislabel: float = 0.1
                    ) -> tuple[list[PointMark], list[set[int]]]:
    """Each volunteer clicks each object unless they miss it, sometimes twice, sometimes with the wrong label, and
    clicks a few times at random. Returns the marks and, per object, who clicked it."""
    names = sorted(set(labels))
    marks, clickers = [], [set() for _ in truth]
    for volunteer in volunteers:
        for index, (centre, label) in enumerate(zip(truth, labels, strict=True)):
            if rng.random() < miss:
                continue
            clickers[index].add(volunteer)
            given = rng.choice(names) if rng.random() < mislabel else label
            marks.append(PointMark(volunteer, click(rng, centre, sigma, voxel), str(given)))
            if rng.random() < double:
                marks.append(PointMark(volunteer, click(rng, centre, sigma, voxel), str(given)))
        for _ in range(strays):
            marks.append(PointMark(volunteer, click(rng, rng.uniform(low, high), 0 * sigma, voxel), names[0]))
    return marks, clickers


def nearest_truth(points: list[ConsensusPoint], truth: np.ndarray, radius: float) -> list[tuple[int, float]]:
    """For each consensus point: the index of the nearest true object and the distance (nm)."""
    found = []
    for point in points:
        distance = np.linalg.norm(truth - np.array(point.position), axis=1)
        found.append((int(distance.argmin()), float(distance.min())))
    assert all(d <= radius for _, d in found)
    return found


def as_marks(points: list[ConsensusPoint]) -> list[PointMark]:
    return [PointMark(0, p.position, p.label) for p in points]


# ---------------------------------------------------------------------------------------------------------------
# Points: simulated volunteers in an anisotropic volume


VOXEL = np.array([4.0, 4.0, 40.0])  # nm, FIB-SEM-like: fine in x y, thick slices
LOW, HIGH = np.array([0.0, 0.0, 0.0]), np.array([3000.0, 3000.0, 1600.0])
RADIUS = 100.0


@pytest.fixture(scope="module")
def crowd() -> dict:
    rng = np.random.default_rng(2024)
    truth = spread_out(rng, 60, LOW + 100, HIGH - 100, apart=300.0)
    labels = [str(rng.choice(["mitochondrion", "synapse"])) for _ in truth]
    marks, clickers = simulate_points(rng, truth, labels, range(15), sigma=np.array([15.0, 15.0, 25.0]),
                                      voxel=VOXEL, low=LOW, high=HIGH)
    spam = [PointMark(SPAMMER, click(rng, rng.uniform(LOW, HIGH), np.zeros(3), VOXEL), "synapse")
            for _ in range(400)]
    seen_by = {v: 1.0 for v in [*range(15), SPAMMER, 50]}  # 50 pressed "nothing here"
    started = time.process_time()
    consensus = point_consensus(marks + spam, seen_by, RADIUS)
    elapsed = time.process_time() - started
    return dict(truth=truth, labels=labels, marks=marks, clickers=clickers, spam=spam, seen_by=seen_by,
                consensus=consensus, elapsed=elapsed)


def test_points_recall_precision_and_localisation(crowd: dict) -> None:
    truth, consensus = crowd["truth"], crowd["consensus"]
    score = score_points(as_marks(consensus), [PointMark(0, tuple(t), label) for t, label
                                               in zip(truth, crowd["labels"], strict=True)], RADIUS)
    assert score.recall >= 0.95 and score.precision >= 0.95, score
    matched = nearest_truth(consensus, truth, RADIUS)
    assert len({i for i, _ in matched}) == len(matched)  # never two consensus points on one object
    errors = np.array([d for _, d in matched])
    single_click = np.linalg.norm(np.array([15.0, 15.0, 27.0]))  # a lone click's typical error
    assert errors.mean() < 20.0 and errors.mean() < single_click / 2, errors.mean()
    assert all(p.label == crowd["labels"][i] for p, (i, _) in zip(consensus, matched, strict=True))
    assert crowd["elapsed"] < 1.0


def test_points_support_is_one_vote_per_volunteer_who_clicked(crowd: dict) -> None:
    consensus, clickers, seen = crowd["consensus"], crowd["clickers"], crowd["seen_by"]
    exact = 0
    for point, (index, _) in zip(consensus, nearest_truth(consensus, crowd["truth"], RADIUS), strict=True):
        assert point.volunteers == tuple(sorted(set(point.volunteers))) and point.support == len(point.volunteers)
        assert point.agreement == pytest.approx(point.support / len(seen))
        assert point.weighted_agreement == pytest.approx(point.agreement)  # all weights 1
        assert point.agreement >= 0.5 and point.support <= 16
        exact += set(point.volunteers) - {SPAMMER} == clickers[index]
    assert exact >= 0.95 * len(consensus)
    expected = np.mean([len(c) for c in clickers])  # about 12 of 15 (each misses 20%)
    assert abs(np.mean([p.support for p in consensus]) - expected) < 1.0


def test_points_spammer_neither_creates_nor_drags(crowd: dict) -> None:
    spam, seen = crowd["spam"], crowd["seen_by"]
    assert point_consensus(spam, seen, RADIUS) == []
    # Alone with one other volunteer their clicks are half the task's weight: min_support still refuses them.
    assert point_consensus(spam, {SPAMMER: 1.0, 0: 1.0}, RADIUS) == []
    assert len(point_consensus(spam, {SPAMMER: 1.0, 0: 1.0}, RADIUS, min_support=1)) > 300
    # Without the spammer's clicks (as if they had answered "nothing here") the same objects come out at nearly the
    # same places: within 10 nm in x y and half a 40 nm slice in z. Only an object within a vote of the threshold
    # may come or go (their one vote, or a click at the radius falling the other way as the centre moves).
    honest = point_consensus(crowd["marks"], seen, RADIUS)
    with_spam = np.array([p.position for p in crowd["consensus"]])
    without = np.array([p.position for p in honest])
    borderline = 0.5 * len(seen)
    for point in honest:
        distance = np.linalg.norm(with_spam - point.position, axis=1)
        if distance.min() > RADIUS:
            assert abs(point.support - borderline) <= 1
            continue
        shift = np.abs(with_spam[distance.argmin()] - point.position)
        assert max(shift[:2]) < 10.0 and shift[2] <= 20.0, shift
    for point in crowd["consensus"]:
        if np.linalg.norm(without - point.position, axis=1).min() > RADIUS:
            assert abs(point.support - borderline) <= 1
    assert abs(len(honest) - len(crowd["consensus"])) <= 2
    assert sum(SPAMMER in p.volunteers for p in crowd["consensus"]) < 0.5 * len(crowd["consensus"])


def test_points_fast_for_50_volunteers_of_200_points() -> None:
    rng = np.random.default_rng(7)
    centres = spread_out(rng, 200, np.zeros(3), np.array([20000.0, 20000.0, 8000.0]), apart=400.0)
    marks = [PointMark(v, tuple(c + rng.normal(0, 20, 3)), "x") for v in range(50) for c in centres]
    started = time.process_time()
    consensus = point_consensus(marks, {v: 1.0 for v in range(50)}, 100.0)
    elapsed = time.process_time() - started
    assert len(consensus) == 200 and all(p.support == 50 for p in consensus)
    assert elapsed < 1.0, elapsed


def test_points_one_vote_per_volunteer_per_cluster() -> None:
    marks = [PointMark(1, (0, 0, 0), "a"), PointMark(1, (10, 0, 0), "a"), PointMark(2, (4, 0, 0), "a")]
    [point] = point_consensus(marks, {1: 1.0, 2: 1.0, 3: 1.0}, radius_nm=50)
    assert point.support == 2 and point.volunteers == (1, 2)
    assert point.agreement == pytest.approx(2 / 3) and point.weighted_agreement == pytest.approx(2 / 3)
    assert point.position == (4.5, 0.0, 0.0)  # volunteer 1's vote is at the mean of their two clicks, 5


def test_points_double_clicks_make_no_second_cluster() -> None:
    # Three volunteers each click one object twice, 40 nm apart (radius 50): the extra clicks, left to themselves,
    # would be a second object with three supporters.
    marks = []
    for volunteer, angle in zip((1, 2, 3), (0.0, 2.1, 4.2), strict=True):
        marks.append(PointMark(volunteer, (20 * np.cos(angle), 20 * np.sin(angle), 0.0), "a"))
        marks.append(PointMark(volunteer, (-20 * np.cos(angle), -20 * np.sin(angle), 0.0), "a"))
    result = point_consensus(marks, {1: 1.0, 2: 1.0, 3: 1.0}, radius_nm=50)
    assert len(result) == 1 and result[0].support == 3
    assert np.linalg.norm(result[0].position) < 20


def test_points_threshold_and_weights() -> None:
    a, b = (0.0, 0.0, 0.0), (500.0, 0.0, 0.0)
    marks = [PointMark(v, a, "a") for v in (1, 2, 3)] + [PointMark(v, b, "b") for v in (4, 5)]
    plain = {v: 1.0 for v in range(1, 6)}
    assert [p.label for p in point_consensus(marks, plain, 50)] == ["a"]  # 3/5 kept, 2/5 dropped
    assert [p.label for p in point_consensus(marks, plain, 50, threshold=0.4)] == ["a", "b"]
    assert point_consensus(marks, plain, 50, threshold=0.61) == []
    # Three low-quality volunteers against two good ones: weighting turns the outcome round.
    weighted = {1: 0.2, 2: 0.2, 3: 0.2, 4: 1.0, 5: 1.0}
    [point] = point_consensus(marks, weighted, 50)
    assert point.label == "b" and point.support == 2
    assert point.agreement == pytest.approx(0.4) and point.weighted_agreement == pytest.approx(2 / 2.6)
    # "Nothing here" volunteers count in the denominator.
    assert point_consensus(marks, {**plain, 6: 1.0, 7: 1.0}, 50) == []


def test_points_label_is_the_weighted_majority() -> None:
    marks = [PointMark(v, (float(v), 0.0, 0.0), "vesicle") for v in (1, 2, 3)]
    marks += [PointMark(v, (float(v), 0.0, 0.0), "synapse") for v in (4, 5)]
    [plain] = point_consensus(marks, {v: 1.0 for v in range(1, 6)}, 50)
    assert plain.label == "vesicle" and plain.label_agreement == pytest.approx(0.6)
    [weighted] = point_consensus(marks, {1: 0.2, 2: 0.2, 3: 0.2, 4: 0.9, 5: 0.9}, 50)
    assert weighted.label == "synapse" and weighted.label_agreement == pytest.approx(1.8 / 2.4)
    assert weighted.support == 5


def test_points_position_is_robust() -> None:
    marks = [PointMark(v, (0.0, 0.0, 0.0), "a") for v in range(4)] + [PointMark(4, (45.0, 0.0, 0.0), "a")]
    [point] = point_consensus(marks, {v: 1.0 for v in range(5)}, 50)
    assert point.position == (0.0, 0.0, 0.0) and point.support == 5


def test_points_independent_of_input_order(crowd: dict) -> None:
    shuffled = crowd["marks"] + crowd["spam"]
    random.Random(3).shuffle(shuffled)
    assert point_consensus(shuffled, crowd["seen_by"], RADIUS) == crowd["consensus"]


def test_points_reject_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="not in seen_by"):
        point_consensus([PointMark(9, (0, 0, 0), "a")], {1: 1.0}, 50)
    with pytest.raises(ValueError, match="weight"):
        point_consensus([], {1: -1.0}, 50)
    with pytest.raises(ValueError, match="radius"):
        point_consensus([], {1: 1.0}, 0)
    with pytest.raises(ValueError, match="threshold"):
        point_consensus([], {1: 1.0}, 50, threshold=1.5)
    with pytest.raises(ValueError, match="finite"):
        point_consensus([PointMark(1, (np.nan, 0, 0), "a")], {1: 1.0}, 50)
    assert point_consensus([], {}, 50) == []


# ---------------------------------------------------------------------------------------------------------------
# Points and outlines from the FlyEM medulla ground truth


@pytest.fixture(scope="module")
def bodies() -> np.ndarray:
    return tifffile.imread(fly_bodies())


def test_fly_body_centres(bodies: np.ndarray) -> None:
    region = bodies[:128]  # a task region of 2.5 x 2.5 x 1.28 µm
    sizes = np.bincount(region.ravel())
    ids = np.flatnonzero(sizes >= 1000)  # the bodies with at least 1,000 voxels in the region
    centres = np.array(ndimage.center_of_mass(np.ones(region.shape, bool), region, ids))[:, ::-1] * FLY_NM
    rng = np.random.default_rng(11)
    voxel, low, high = np.full(3, FLY_NM), np.zeros(3), np.array(region.shape[::-1]) * FLY_NM
    assert len(centres) > 100
    radius = 50.0  # some bodies' centres are less than 100 nm apart
    marks, _ = simulate_points(rng, centres, ["neuron"] * len(centres), range(12), sigma=np.full(3, 15.0),
                                      voxel=voxel, low=low, high=high, miss=0.15, strays=5, mislabel=0.0)
    marks += [PointMark(SPAMMER, click(rng, rng.uniform(low, high), np.zeros(3), voxel), "neuron")
              for _ in range(300)]
    consensus = point_consensus(marks, {**{v: 1.0 for v in range(12)}, SPAMMER: 1.0}, radius)
    score = score_points(as_marks(consensus), [PointMark(0, tuple(c), "neuron") for c in centres], radius)
    assert score.recall >= 0.9 and score.precision >= 0.9, score
    errors = [d for _, d in nearest_truth(consensus, centres, radius)]
    assert np.mean(errors) < 15.0


def fly_objects(section: np.ndarray, count: int) -> list[np.ndarray]:
    """Masks of ``count`` single-piece, hole-free body sections of 400 to 4,000 pixels, away from the edge and at
    least 4 pixels from each other (neighbouring bodies touch; volunteers outline separate objects)."""
    candidates = []
    for body in np.unique(section):
        pieces, n = ndimage.label(section == body)
        for piece in range(1, n + 1):
            mask = pieces == piece
            rows, cols = np.nonzero(mask)
            if not 400 <= mask.sum() <= 4000 or min(rows.min(), cols.min()) < 3 or max(rows.max(), cols.max()) > 246:
                continue
            if np.array_equal(ndimage.binary_fill_holes(mask), mask):
                candidates.append(mask)
    chosen: list[np.ndarray] = []
    taken = np.zeros(section.shape, bool)
    for mask in sorted(candidates, key=lambda m: -m.sum()):
        if not (ndimage.binary_dilation(mask, iterations=4) & taken).any():
            chosen.append(mask)
            taken |= mask
        if len(chosen) == count:
            break
    return chosen


def drawn_outline(rng: np.random.Generator, mask: np.ndarray, jitter: float, shift: np.ndarray,
                  step: int = 3) -> tuple[tuple[float, float], ...]:
    """A volunteer's outline of a mask: every ``step``-th point of its boundary, each off by ``jitter`` pixels,
    all moved by ``shift`` pixels, in nm (the FlyEM grid: pixel (0, 0)'s centre at the origin)."""
    boundary = max(measure.find_contours(np.pad(mask, 1).astype(float), 0.5), key=len)[:-1:step] - 1
    boundary = boundary + rng.normal(0, jitter, boundary.shape) + shift
    return tuple((float(col * FLY_NM), float(row * FLY_NM)) for row, col in boundary)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_fly_outlines_majority(bodies: np.ndarray) -> None:
    z = 125
    section = bodies[z]
    objects = fly_objects(section, 7)
    assert len(objects) == 7
    grid = SliceGrid(origin=(0.0, 0.0), pixel_nm=(FLY_NM, FLY_NM), shape=section.shape)
    # Twelve volunteers trace the boundaries with jittered vertices, each missing an object now and then; the last
    # one is sloppy (shifted, wobbly outlines). With these settings the assertions below hold for 60 seeds of 60.
    rng = np.random.default_rng(5)
    marks, own_iou = [], {v: [] for v in range(12)}
    for volunteer in range(12):
        sloppy = volunteer == 11
        for mask in objects:
            if rng.random() < 0.1:  # missed
                continue
            shift = rng.normal(0, 3, 2) if sloppy else np.zeros(2)
            points = drawn_outline(rng, mask, 3.0 if sloppy else 0.8, shift)
            marks.append(OutlineMark(volunteer, points, z * FLY_NM, "neuron"))
            own_iou[volunteer].append(iou(outline_mask(points, grid), mask))
    started = time.process_time()
    consensus = outline_consensus(marks, {v: 1.0 for v in range(12)}, grid)
    elapsed = time.process_time() - started
    assert all(c.z == z * FLY_NM and c.label == "neuron" for c in consensus)
    drawn = [outline_mask(c.points, grid, c.holes) for c in consensus]
    # Every consensus region lies on a true object.
    assert all(any((d & m).any() for m in objects) for d in drawn)
    together = np.any(drawn, axis=0)
    scores = [iou(together & ndimage.binary_dilation(m, iterations=6), m) for m in objects]
    assert min(scores) >= 0.85 and np.mean(scores) >= 0.9, scores
    volunteer_means = [np.mean(v) for v in own_iou.values()]
    assert np.mean(scores) > max(volunteer_means), (np.mean(scores), volunteer_means)
    assert elapsed < 1.0
    # The same answer scored against the truth, by pixels.
    expert = [OutlineMark(0, drawn_outline(rng, m, 0.0, np.zeros(2), step=1), z * FLY_NM, "neuron")
              for m in objects]
    assert score_outlines([OutlineMark(0, c.points, c.z, c.label) for c in consensus if not c.holes], expert,
                          grid).iou >= 0.9


# ---------------------------------------------------------------------------------------------------------------
# Outlines: hand cases


GRID = SliceGrid(origin=(100.0, 200.0), pixel_nm=(4.0, 6.0), shape=(40, 50))


def at(col: float, row: float) -> tuple[float, float]:
    """The centre of pixel (row, col) of GRID, in nm."""
    return (100.0 + col * 4.0, 200.0 + row * 6.0)


def square(col0: float, row0: float, col1: float, row1: float) -> tuple[tuple[float, float], ...]:
    """A rectangle through pixel centres on GRID, in nm."""
    return (at(col0, row0), at(col1, row0), at(col1, row1), at(col0, row1))


def test_outline_majority_region_and_its_polygon() -> None:
    a, b = square(5, 5, 14, 14), square(30, 20, 39, 29)
    marks = [OutlineMark(1, a, 80.0, "nucleus"), OutlineMark(2, a, 80.0, "nucleus"),
             OutlineMark(3, b, 80.0, "nucleus")]
    [region] = outline_consensus(marks, {1: 1.0, 2: 1.0, 3: 1.0}, GRID)
    assert region.support == 2 and region.volunteers == (1, 2) and region.agreement == pytest.approx(2 / 3)
    assert region.area_nm2 == 100 * 4.0 * 6.0 and region.z == 80.0 and region.holes == ()
    assert np.array_equal(outline_mask(region.points, GRID), outline_mask(a, GRID))
    xy = np.array(region.points)
    assert np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(np.roll(xy[:, 0], -1), xy[:, 1]) > 0  # counter-clockwise


def test_outline_one_volunteer_counts_once() -> None:
    a = square(5, 5, 14, 14)
    marks = [OutlineMark(1, a, 0.0, "x"), OutlineMark(1, square(6, 6, 15, 15), 0.0, "x")]
    assert outline_consensus(marks, {1: 1.0, 2: 1.0, 3: 1.0}, GRID, threshold=0.5) == []
    assert outline_consensus(marks, {1: 1.0, 2: 1.0, 3: 1.0}, GRID, threshold=0.3) == []  # min_support 2
    [alone] = outline_consensus(marks, {1: 1.0, 2: 1.0, 3: 1.0}, GRID, threshold=0.3, min_support=1)
    assert alone.support == 1 and alone.area_nm2 == (100 + 100 - 81) * 24.0  # the union of both


def test_outline_weights_and_slices() -> None:
    a, b = square(2, 2, 10, 10), square(20, 20, 30, 30)
    marks = [OutlineMark(v, a, 0.0, "low") for v in (1, 2, 3)] + [OutlineMark(v, b, 0.0, "high") for v in (4, 5)]
    marks += [OutlineMark(v, b, 40.0, "high") for v in (1, 2, 3)]
    plain = outline_consensus(marks, {v: 1.0 for v in range(1, 6)}, GRID)
    assert [(c.z, c.label) for c in plain] == [(0.0, "low"), (40.0, "high")]
    weighted = outline_consensus(marks, {1: 0.2, 2: 0.2, 3: 0.2, 4: 1.0, 5: 1.0}, GRID)
    assert [(c.z, c.label) for c in weighted] == [(0.0, "high")]
    assert weighted[0].weighted_agreement == pytest.approx(2 / 2.6)


def test_outline_hole() -> None:
    # Three volunteers outline the same square, each with a notch reaching its middle from another side: the
    # middle is enclosed by nobody, everything else by at least two of three.
    top = [at(0, 0), at(10, 0), at(10, 20), at(20, 20), at(20, 0), at(30, 0), at(30, 30), at(0, 30)]
    bottom = [at(0, 0), at(30, 0), at(30, 30), at(20, 30), at(20, 10), at(10, 10), at(10, 30), at(0, 30)]
    left = [at(0, 0), at(30, 0), at(30, 30), at(0, 30), at(0, 20), at(20, 20), at(20, 10), at(0, 10)]
    marks = [OutlineMark(v, tuple(p), 0.0, "cell") for v, p in enumerate((top, bottom, left))]
    expected = sum(outline_mask(m.points, GRID).astype(int) for m in marks) >= 2
    assert not expected[15, 15] and expected[2, 2]
    [ring] = outline_consensus(marks, {0: 1.0, 1: 1.0, 2: 1.0}, GRID)
    assert len(ring.holes) == 1 and ring.area_nm2 == expected.sum() * 24.0
    drawn = outline_mask(ring.points, GRID, ring.holes)
    assert not drawn[15, 15] and (drawn ^ expected).sum() <= 0.02 * expected.sum()


def test_outline_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="3 points"):
        outline_consensus([OutlineMark(1, ((0, 0), (1, 1)), 0.0, "x")], {1: 1.0}, GRID)
    with pytest.raises(ValueError, match="grid"):
        outline_consensus([], {1: 1.0}, SliceGrid((0, 0), (0, 1), (4, 4)))


# ---------------------------------------------------------------------------------------------------------------
# Boxes


def box_iou(a: tuple, b: tuple) -> float:
    lo, hi = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return float(inter / (np.prod(np.subtract(a[1], a[0])) + np.prod(np.subtract(b[1], b[0])) - inter))


def test_boxes_simulated() -> None:
    rng = np.random.default_rng(31)
    low, high = np.zeros(3), np.array([6000.0, 6000.0, 3000.0])
    centres = spread_out(rng, 25, low + 500, high - 500, apart=900.0)
    sizes = np.column_stack([rng.uniform(200, 600, (25, 2)), rng.uniform(120, 400, 25)])
    truth = [(np.round((c - s / 2) / VOXEL) * VOXEL, np.round((c + s / 2) / VOXEL) * VOXEL)  # faces on slices
             for c, s in zip(centres, sizes, strict=True)]

    def drawn(lower: np.ndarray, upper: np.ndarray, volunteer: int, label: str) -> BoxMark:
        size = upper - lower
        lo = np.round((lower + rng.normal(0, 0.04 * size)) / VOXEL) * VOXEL
        hi = np.round((upper + rng.normal(0, 0.04 * size)) / VOXEL) * VOXEL
        return BoxMark(volunteer, tuple(map(float, lo)), tuple(map(float, hi)), label)

    marks = []
    for volunteer in range(12):
        for lower, upper in truth:
            if rng.random() < 0.15:
                continue
            marks.append(drawn(lower, upper, volunteer, "cell"))
            if rng.random() < 0.1:
                marks.append(drawn(lower, upper, volunteer, "cell"))
        for _ in range(2):
            corner = rng.uniform(low, high - 600)
            marks.append(drawn(corner, corner + rng.uniform(100, 600, 3), volunteer, "cell"))
    for _ in range(150):
        corner = rng.uniform(low, high - 600)
        marks.append(drawn(corner, corner + rng.uniform(100, 600, 3), SPAMMER, "cell"))
    started = time.process_time()
    consensus = box_consensus(marks, {**{v: 1.0 for v in range(12)}, SPAMMER: 1.0})
    elapsed = time.process_time() - started
    expert = [BoxMark(0, tuple(lo), tuple(hi), "cell") for lo, hi in truth]
    score = score_boxes([BoxMark(0, c.lower, c.upper, c.label) for c in consensus], expert)
    assert score.recall >= 0.95 and score.precision >= 0.95, score
    overlaps = [max(box_iou((c.lower, c.upper), t) for t in truth) for c in consensus]
    assert min(overlaps) >= 0.8, overlaps
    assert all(c.support == len(c.volunteers) <= 13 for c in consensus)
    assert elapsed < 1.0


def test_boxes_hand_cases() -> None:
    unit = BoxMark(1, (0, 0, 0), (10, 10, 10), "a")
    flipped = BoxMark(2, (10, 10, 10), (0, 0, 0), "a")  # corners in any order
    taller = BoxMark(3, (0, 0, 0), (10, 10, 20), "b")  # IoU 0.5 with the others
    twice = BoxMark(1, (1, 0, 0), (11, 10, 10), "a")  # volunteer 1 again
    [box] = box_consensus([unit, flipped, taller, twice], {1: 1.0, 2: 1.0, 3: 1.0})
    assert box.support == 3 and box.volunteers == (1, 2, 3) and box.label == "a"
    assert box.lower == (0.0, 0.0, 0.0) and box.upper == (10.0, 10.0, 10.0)
    assert box_consensus([unit, flipped, taller], {1: 1.0, 2: 1.0, 3: 1.0}, iou=0.6)[0].support == 2
    # Boxes drawn on one slice (flat in z) agree with each other on that slice only.
    flat = [BoxMark(v, (0, 0, 40), (10, 10, 40), "a") for v in (1, 2)] + [BoxMark(3, (0, 0, 80), (10, 10, 80), "a")]
    [slab] = box_consensus(flat, {1: 1.0, 2: 1.0, 3: 1.0})
    assert slab.volunteers == (1, 2) and slab.lower[2] == slab.upper[2] == 40.0


# ---------------------------------------------------------------------------------------------------------------
# Scores


def test_score_points_hand_cases() -> None:
    expert = [PointMark(0, (0, 0, 0), "a"), PointMark(0, (100, 0, 0), "a")]
    # One exact click, one near the second object with the wrong label, and a double click on the first.
    marks = [PointMark(1, (0, 0, 0), "a"), PointMark(1, (110, 0, 0), "b"), PointMark(1, (5, 0, 0), "a")]
    score = score_points(marks, expert, 60)
    assert (score.tp, score.fp, score.fn) == (1, 2, 1)
    assert score.precision == pytest.approx(1 / 3) and score.recall == 0.5 and score.f1 == pytest.approx(0.4)
    # Greedy nearest matching would pair (45) with the object at 0 and leave (-10) unmatched.
    both = score_points([PointMark(1, (45, 0, 0), "a"), PointMark(1, (-10, 0, 0), "a")], expert, 60)
    assert both.tp == 2 and both.f1 == 1.0
    nothing = score_points([], [], 60)  # a correct "nothing here"
    assert nothing.f1 == 1.0 and nothing.precision == 1.0 and nothing.recall == 1.0 and nothing.iou == 1.0
    assert score_points([], expert, 60).f1 == 0.0 and score_points(marks, [], 60).f1 == 0.0


def test_agreement_with_consensus() -> None:
    consensus = [ConsensusPoint((0, 0, 0), "a", 3, 1.0, 1.0, (1, 2, 3), 1.0),
                 ConsensusPoint((500, 0, 0), "a", 3, 1.0, 1.0, (1, 2, 3), 1.0)]
    score = agreement_with([PointMark(4, (10, 0, 0), "a"), PointMark(4, (900, 0, 0), "a")], consensus, 50)
    assert (score.tp, score.fp, score.fn) == (1, 1, 1) and score.f1 == 0.5
    assert agreement_with([], [], 50).f1 == 1.0
    with pytest.raises(ValueError, match="one volunteer"):
        agreement_with([PointMark(1, (0, 0, 0), "a"), PointMark(2, (0, 0, 0), "a")], consensus, 50)


def test_score_boxes_hand_cases() -> None:
    expert = [BoxMark(0, (0, 0, 0), (10, 10, 10), "a")]
    taller = [BoxMark(1, (0, 0, 0), (10, 10, 20), "a")]  # IoU exactly 0.5
    assert score_boxes(taller, expert).tp == 1
    assert score_boxes(taller, expert, iou=0.6).tp == 0
    assert score_boxes([BoxMark(1, (0, 0, 0), (10, 10, 10), "b")], expert).tp == 0  # wrong label
    assert score_boxes([], []).f1 == 1.0 and score_boxes([], expert).recall == 0.0


def test_score_outlines_hand_cases() -> None:
    grid = SliceGrid(origin=(0.0, 0.0), pixel_nm=(1.0, 1.0), shape=(40, 40))
    expert = [OutlineMark(0, ((10, 10), (19, 10), (19, 19), (10, 19)), 5.0, "x")]  # 100 pixels
    shifted = [OutlineMark(1, ((15, 10), (24, 10), (24, 19), (15, 19)), 5.0, "x")]
    score = score_outlines(shifted, expert, grid)
    assert (score.tp, score.fp, score.fn) == (50, 50, 50)
    assert score.iou == pytest.approx(1 / 3) and score.f1 == pytest.approx(0.5)
    elsewhere = score_outlines([OutlineMark(1, expert[0].points, 10.0, "x")], expert, grid)
    assert (elsewhere.tp, elsewhere.fp, elsewhere.fn) == (0, 100, 100)
    assert score_outlines(expert, expert, grid).f1 == 1.0
    assert score_outlines([], [], grid).f1 == 1.0  # "nothing here" on an empty gold task


# ---------------------------------------------------------------------------------------------------------------
# Volunteer quality


def test_volunteer_quality_bounded_and_monotone() -> None:
    rng = np.random.default_rng(1)
    assert volunteer_quality([], []) == 0.5
    assert volunteer_quality([1.0], []) == pytest.approx(2 / 3)  # one task moves a newcomer only a little
    assert volunteer_quality([1.0] * 200, []) > 0.99
    assert volunteer_quality([0.0] * 200, [0.0] * 200) == 0.05
    assert volunteer_quality([1.0], []) > volunteer_quality([], [1.0]) > 0.5  # gold counts more
    assert volunteer_quality([0.0], []) < volunteer_quality([], [0.0]) < 0.5
    for _ in range(200):
        gold, agree = rng.random(rng.integers(0, 6)), rng.random(rng.integers(0, 6))
        quality = volunteer_quality(gold, agree)
        assert 0.05 <= quality <= 1.0
        if len(gold):
            better = gold.copy()
            better[rng.integers(len(gold))] = 1.0
            assert volunteer_quality(better, agree) >= quality
        if len(agree):
            worse = agree.copy()
            worse[rng.integers(len(agree))] = 0.0
            assert volunteer_quality(gold, worse) <= quality
        assert volunteer_quality([*gold, 1.0], agree) >= quality
        assert volunteer_quality([*gold, 0.0], agree) <= quality
    with pytest.raises(ValueError):
        volunteer_quality([1.5], [])
    with pytest.raises(ValueError):
        volunteer_quality([], [], prior=2.0)
