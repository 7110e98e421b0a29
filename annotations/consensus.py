"""Consensus of many volunteers' marks on one Citizen Science task region, and scores against an expert's answer.

Pure NumPy, SciPy and scikit-image: no database, no web code. Positions are physical nanometres (x, y, z), so
anisotropic voxels need no special care here. ``seen_by`` maps every volunteer who submitted the task, including
those who answered "nothing here", to their weight (1.0 unweighted, their quality otherwise). A cluster's
``agreement`` is its distinct supporters over everyone who saw the task; ``weighted_agreement`` is the same with
weights, and a cluster is kept when ``weighted_agreement >= threshold`` and at least ``min_support`` distinct
volunteers back it (default 2: one person, however heavily weighted or however few others saw the task, is not a
consensus; pass ``min_support=1`` for the threshold alone).

Points and boxes: density-seeded greedy clustering with one vote per volunteer per cluster
--------------------------------------------------------------------------------------
Each mark's density is the weight of the distinct volunteers with a mark within ``radius_nm`` of it (boxes:
3D IoU at least ``iou``). The densest unclaimed mark seeds a cluster. The cluster takes every unclaimed mark
within reach of its centre; each volunteer among them has one vote, placed at the mean of their marks there, and
the centre moves to the weighted centre of the votes; that repeats until the marks taken stop changing. A double
click therefore counts once, is placed where the volunteer meant it on average (not wherever the nearer of the
two clicks fell), and is claimed with the cluster, so it cannot survive to seed a second cluster that other
people's double clicks could then support. Densities are kept current lazily (a mark is re-scored only when one
of its neighbours was claimed), so the whole run is a k-d tree (``scipy.spatial.cKDTree``), a heap and a few tree
queries per cluster: 50 volunteers x 200 points take about a quarter of a second.

A point's centre is the per-coordinate weighted interquartile mean of its votes (the mean of the middle half of
the weight): as robust as a median to a quarter of wild members, but it averages the rest, so it is more
precise with Gaussian click errors and does not jump by half a slice when one vote on thick, quantised slices
comes or goes, as a median does. A box's corners are the per-coordinate weighted median of its votes'.

Why this and not the usual alternatives: DBSCAN (Zooniverse's default for points) has no notion of who clicked,
so one volunteer clicking everywhere supplies core points, clusters chain through stray clicks, and a double
click counts twice; single-linkage agglomeration chains the same way; k-means needs the number of objects, which
is the unknown. Here every cluster is compact (all its marks are within ``radius_nm`` of its centre, so
neighbouring objects further apart than the radius stay separate), its support is a count of distinct people, a
volunteer who clicks everywhere adds at most one vote to each cluster (never a consensus on their own, see
``min_support``), and the trimmed centre keeps that one vote from pulling it. Marks are put in a canonical order
first, so the result does not depend on the order they were given in. Membership is decided by distance from
the settled centre, so a click right at ``radius_nm`` may fall either side: choose the radius well above the
click error (two to three standard deviations) and below the spacing of neighbouring objects.

Outlines: pixel-wise weighted majority (Etch a Cell's rule), per slice
--------------------------------------------------------------------
Each volunteer's outlines on a slice are rasterised on the task's pixel grid (a pixel is inside when its centre
is inside or on the polygon) and united, so overlapping outlines of one volunteer count once. A pixel is kept
where the weight of the volunteers enclosing it is at least ``threshold`` of the weight of everyone who saw the
task. Each 8-connected kept region is traced back into a polygon (``skimage.measure.find_contours`` on the padded
mask, which passes between pixel centres, so rasterising the unsimplified polygon gives the region back exactly)
and simplified to within half a pixel (``skimage.measure.approximate_polygon``). Holes come back as separate
polygons. Touching objects whose outlines overlap merge into one region: outline them in separate tasks or slices.

Scores
------
``Score`` counts true and false positives and negatives: points and boxes are matched one-to-one (Hungarian
assignment, ``scipy.optimize.linear_sum_assignment``, most matches first, then closest) within ``radius_nm`` or
``iou`` and with equal labels; outlines are compared pixel by pixel as the union of each side per slice. An empty
answer to a task with nothing in it scores f1 = 1: "nothing here" was right.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from skimage.draw import polygon as draw_polygon
from skimage.measure import approximate_polygon, find_contours

Polygon = tuple[tuple[float, float], ...]

_TOLERANCE = 1e-9  # relative slack on the threshold, so that weights like 0.1 + 0.2 + 0.2 still reach 0.5
_Z_DECIMALS = 6  # outlines whose z agree to a millionth of a nanometre are on one slice
_MAX_ROUNDS = 10  # centre updates per cluster; members almost always settle within two or three


@dataclass(frozen=True)
class PointMark:
    volunteer: int
    position: tuple[float, float, float]  # x, y, z nm
    label: str


@dataclass(frozen=True)
class BoxMark:
    """An axis-aligned box; corners may be given in any order (they are sorted per axis)."""

    volunteer: int
    lower: tuple[float, float, float]  # x, y, z nm
    upper: tuple[float, float, float]
    label: str


@dataclass(frozen=True)
class OutlineMark:
    volunteer: int
    points: Polygon  # x, y nm, a closed polygon (the last point need not repeat the first)
    z: float  # the slice's z nm
    label: str


@dataclass(frozen=True)
class SliceGrid:
    """The pixel grid outlines are rasterised on: origin (x, y) nm of pixel (0, 0)'s centre, pixel size nm,
    shape (rows=y, cols=x)."""

    origin: tuple[float, float]
    pixel_nm: tuple[float, float]
    shape: tuple[int, int]


@dataclass(frozen=True)
class ConsensusPoint:
    position: tuple[float, float, float]  # weighted per-coordinate interquartile mean of the votes
    label: str  # weighted majority of the members' labels (a volunteer's weight shared among their marks)
    support: int  # distinct volunteers who marked it
    agreement: float  # support / volunteers who saw the task
    weighted_agreement: float  # supporters' weight / weight of all who saw the task
    volunteers: tuple[int, ...]  # the supporters, ascending
    label_agreement: float  # share of the supporters' weight behind ``label``


@dataclass(frozen=True)
class ConsensusBox:
    lower: tuple[float, float, float]  # per-coordinate weighted median of the votes
    upper: tuple[float, float, float]
    label: str
    support: int
    agreement: float
    weighted_agreement: float
    volunteers: tuple[int, ...]
    label_agreement: float


@dataclass(frozen=True)
class ConsensusOutline:
    points: Polygon  # x, y nm, closed polygon, counter-clockwise in (x, y); the last point does not repeat the first
    z: float
    label: str
    support: int  # volunteers whose outlines overlap the region
    agreement: float
    weighted_agreement: float
    volunteers: tuple[int, ...]
    area_nm2: float  # the region's pixels times the pixel area (holes excluded)
    label_agreement: float
    holes: tuple[Polygon, ...] = ()  # clockwise in (x, y)


@dataclass(frozen=True)
class Score:
    """Agreement of an answer with a reference. precision = tp / (tp + fp), 1.0 when nothing was marked;
    recall = tp / (tp + fn), 1.0 when there was nothing to find; f1 = 2tp / (2tp + fp + fn) and
    iou = tp / (tp + fp + fn), both 1.0 when both sides are empty. Counts are objects, or pixels for outlines."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    iou: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> Score:
        return cls(
            tp=tp, fp=fp, fn=fn,
            precision=tp / (tp + fp) if tp + fp else 1.0,
            recall=tp / (tp + fn) if tp + fn else 1.0,
            f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            iou=tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        )


# ---------------------------------------------------------------------------------------------------------------
# Checks and small helpers


def _check_weights(seen_by: Mapping[int, float]) -> dict[int, float]:
    weights = {int(v): float(w) for v, w in seen_by.items()}
    for volunteer, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"volunteer {volunteer} has weight {weight}; weights must be finite and >= 0")
    return weights


def _check_threshold(threshold: float, min_support: int) -> None:
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be within [0, 1], not {threshold}")
    if min_support < 1:
        raise ValueError(f"min_support must be at least 1, not {min_support}")


def _check_known(volunteers: Iterable[int], weights: Mapping[int, float]) -> None:
    unknown = sorted(set(volunteers) - set(weights))
    if unknown:
        raise ValueError(f"marks from volunteers not in seen_by: {unknown[:10]}")


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{what} must be finite numbers")
    return values


def _weighed(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The members of positive weight, or all of them weighing one each when none has any."""
    positive = weights > 0
    if positive.any():
        return values[positive], weights[positive]
    return values, np.ones(len(values))


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column of ``values`` (k, d): the weighted median, the mean of the two middle values on an exact split.

    Members of zero weight are left out unless all weigh zero (then all count equally)."""
    values, weights = _weighed(values, weights)
    if len(values) == 1:
        return values[0].astype(float)
    order = np.argsort(values, axis=0, kind="stable")
    v, cum = np.take_along_axis(values, order, axis=0), np.cumsum(weights[order], axis=0)
    half, slack = cum[-1] / 2, _TOLERANCE * cum[-1]
    at = (cum < half - slack).sum(axis=0)
    columns = np.arange(values.shape[1])
    after = np.minimum(at + 1, len(values) - 1)
    on_split = np.abs(cum[at, columns] - half) <= slack
    return np.where(on_split, (v[at, columns] + v[after, columns]) / 2, v[at, columns])


def _weighted_interquartile_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column of ``values`` (k, d): the weighted mean of the middle half of the weight (25% trimmed each side).

    Robust as a median is to a quarter of wild members, yet it averages the rest, so it is more precise with
    Gaussian click errors and moves smoothly where clicks are quantised to thick slices (a median of slice
    positions jumps by half a slice when one vote comes or goes). Members of zero weight are left out unless all
    weigh zero (then all count equally)."""
    values, weights = _weighed(values, weights)
    if len(values) == 1:
        return values[0].astype(float)
    order = np.argsort(values, axis=0, kind="stable")
    v, upto = np.take_along_axis(values, order, axis=0), np.cumsum(weights[order], axis=0)
    total = upto[-1]
    kept = np.clip(np.minimum(upto, 0.75 * total) - np.maximum(upto - weights[order], 0.25 * total), 0, None)
    return (v * kept).sum(axis=0) / kept.sum(axis=0)


def _majority_label(labels: Sequence[str], weights: Sequence[float]) -> tuple[str, float]:
    """The label with the most weight (then most voters, then alphabetically first) and its share of the weight."""
    weight: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for label, w in zip(labels, weights, strict=True):
        weight[label] += w
        count[label] += 1
    best = min(weight, key=lambda label: (-weight[label], -count[label], label))
    total = sum(weight.values())
    share = weight[best] / total if total > 0 else count[best] / len(labels)
    return best, share


def _agreement(volunteers: Iterable[int], weights: Mapping[int, float]) -> tuple[tuple[int, ...], float, float]:
    """Sorted supporters, plain agreement and weighted agreement."""
    supporters = tuple(sorted(set(volunteers)))
    total = sum(weights.values())
    plain = len(supporters) / len(weights) if weights else 0.0
    weighted = sum(weights[v] for v in supporters) / total if total > 0 else 0.0
    return supporters, plain, weighted


def _passes(support: int, weighted_agreement: float, threshold: float, min_support: int) -> bool:
    return support >= min_support and weighted_agreement >= threshold - _TOLERANCE


# ---------------------------------------------------------------------------------------------------------------
# The clustering shared by points and boxes

# Given a centre: the indices of all marks within reach of it.
Near = Callable[[np.ndarray], np.ndarray]
# The centre of members' features given their weights.
Centre = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _greedy_clusters(features: np.ndarray, voter: np.ndarray, voter_weight: np.ndarray, mark_weight: np.ndarray,
                     pairs: np.ndarray, near: Near, centre_of: Centre) -> list[tuple[np.ndarray, np.ndarray]]:
    """Density-seeded clusters with at most one member per volunteer (see the module docstring).

    ``voter`` codes each mark's volunteer 0..V-1, ``voter_weight`` weighs those codes, ``pairs`` (p, 2) lists the
    marks within reach of each other. Returns each cluster's marks (all those within reach of its centre, of
    whichever volunteers) and its centre."""
    n = len(features)
    first, second = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    adjacency = csr_matrix((np.ones(len(first), bool), (first, second)), shape=(n, n))
    neighbours, starts = adjacency.indices, adjacency.indptr

    # Initial densities: the distinct volunteers among each mark and its neighbours.
    owner = np.concatenate([first, np.arange(n)]).astype(np.int64)
    keys = np.sort(owner * len(voter_weight) + voter[np.concatenate([second, np.arange(n)])])
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    rows, codes = keys // len(voter_weight), keys % len(voter_weight)
    density = np.bincount(rows, weights=voter_weight[codes], minlength=n)
    count = np.bincount(rows, minlength=n)
    heap = list(zip((-density).tolist(), (-count).tolist(), range(n), strict=True))
    heapq.heapify(heap)

    claimed = np.zeros(n, bool)
    stale = np.zeros(n, bool)
    clusters: list[tuple[np.ndarray, np.ndarray]] = []
    while heap:
        _, _, seed = heapq.heappop(heap)
        if claimed[seed]:
            continue
        around = neighbours[starts[seed]:starts[seed + 1]]
        around = around[~claimed[around]]
        if not len(around):  # alone: a cluster of one, and nothing else to claim
            claimed[seed] = True
            clusters.append((np.array([seed]), features[seed]))
            continue
        if stale[seed]:
            codes = np.unique(np.append(voter[around], voter[seed]))
            stale[seed] = False
            heapq.heappush(heap, (-float(voter_weight[codes].sum()), -len(codes), seed))
            continue

        centre, members = features[seed], np.array([seed])
        for round_ in range(_MAX_ROUNDS):
            candidates = near(centre)
            candidates = np.sort(candidates[~claimed[candidates]])
            if not len(candidates) or (round_ and np.array_equal(candidates, members)):
                break
            members = candidates
            codes, inverse = np.unique(voter[members], return_inverse=True)
            # One vote per volunteer, at the mean of their marks within reach (a double click is one vote,
            # wherever its two clicks fell).
            votes = np.zeros((len(codes), features.shape[1]))
            np.add.at(votes, inverse, features[members])
            votes /= np.bincount(inverse)[:, None]
            centre = centre_of(votes, voter_weight[codes])
        claimed[members] = True
        stale[neighbours[_spans(starts, members)]] = True
        clusters.append((members, centre))
    return clusters


def _spans(starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The positions ``starts[r]:starts[r + 1]`` of all ``rows``, concatenated (neighbour lists in CSR form)."""
    lengths = starts[rows + 1] - starts[rows]
    return np.repeat(starts[rows] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def _canonical(volunteers: Sequence[int], coordinates: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """An order of marks by volunteer, coordinates, then label, so that results do not depend on input order."""
    _, label_rank = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    keys = [label_rank, *coordinates.T[::-1], np.asarray(volunteers, dtype=np.int64)]
    return np.lexsort(keys)


def _shared(voters: np.ndarray, weights: np.ndarray) -> list[float]:
    """Each mark's share of its volunteer's one vote: their weight divided among their marks in the cluster."""
    _, inverse, counts = np.unique(voters, return_inverse=True, return_counts=True)
    return (weights / counts[inverse]).tolist()


def _voter_codes(volunteers: Sequence[int], weights: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each mark's volunteer as a code 0..V-1, the codes' weights and each mark's weight."""
    ids, voter = np.unique(np.asarray(volunteers, dtype=np.int64), return_inverse=True)
    voter_weight = np.array([weights[int(v)] for v in ids], dtype=float)
    return voter, voter_weight, voter_weight[voter]


# ---------------------------------------------------------------------------------------------------------------
# Points


def point_consensus(marks: Sequence[PointMark], seen_by: Mapping[int, float], radius_nm: float,
                    threshold: float = 0.5, *, min_support: int = 2) -> list[ConsensusPoint]:
    """Consensus points: clusters of the marks within ``radius_nm`` of their centre, one vote per volunteer at the
    mean of their marks there, the centre the votes' weighted interquartile mean per coordinate; kept when backed
    by ``threshold`` of the weight of everyone who saw the task. Sorted by z, y, x, then label."""
    weights = _check_weights(seen_by)
    _check_threshold(threshold, min_support)
    if not (math.isfinite(radius_nm) and radius_nm > 0):
        raise ValueError(f"radius_nm must be a positive number, not {radius_nm}")
    if not marks:
        return []
    _check_known((m.volunteer for m in marks), weights)
    xyz = _finite(np.array([m.position for m in marks], dtype=float).reshape(-1, 3), "point positions")
    order = _canonical([m.volunteer for m in marks], xyz, [m.label for m in marks])
    marks, xyz = [marks[i] for i in order], xyz[order]
    voter, voter_weight, mark_weight = _voter_codes([m.volunteer for m in marks], weights)
    tree = cKDTree(xyz)

    def near(centre: np.ndarray) -> np.ndarray:
        return np.asarray(tree.query_ball_point(centre, radius_nm), dtype=np.intp)

    pairs = tree.query_pairs(radius_nm, output_type="ndarray")
    result = []
    clusters = _greedy_clusters(xyz, voter, voter_weight, mark_weight, pairs, near, _weighted_interquartile_mean)
    for members, position in clusters:
        supporters, plain, weighted = _agreement((marks[i].volunteer for i in members), weights)
        if not _passes(len(supporters), weighted, threshold, min_support):
            continue
        label, share = _majority_label([marks[i].label for i in members], _shared(voter[members], mark_weight[members]))
        result.append(ConsensusPoint(
            position=(float(position[0]), float(position[1]), float(position[2])), label=label,
            support=len(supporters), agreement=plain, weighted_agreement=weighted, volunteers=supporters,
            label_agreement=share))
    result.sort(key=lambda c: (c.position[2], c.position[1], c.position[0], c.label))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Boxes


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3D IoU of boxes given as (..., 6) lower xyz then upper xyz. Boxes flat along an axis (a box drawn on one
    slice) are compared on the other axes, and only with boxes flat on the same plane."""
    extent_a, extent_b = a[..., 3:] - a[..., :3], b[..., 3:] - b[..., :3]
    overlap = np.clip(np.minimum(a[..., 3:], b[..., 3:]) - np.maximum(a[..., :3], b[..., :3]), 0, None)
    flat = (extent_a == 0) & (extent_b == 0)
    same_plane = (a[..., :3] == b[..., :3]).astype(float)
    extent_a, extent_b = np.where(flat, 1.0, extent_a), np.where(flat, 1.0, extent_b)
    overlap = np.where(flat, same_plane, overlap)
    inter = overlap.prod(axis=-1)
    union = extent_a.prod(axis=-1) + extent_b.prod(axis=-1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _box_array(marks: Sequence[BoxMark]) -> np.ndarray:
    corners = np.array([(*m.lower, *m.upper) for m in marks], dtype=float).reshape(-1, 6)
    _finite(corners, "box corners")
    return np.concatenate([np.minimum(corners[:, :3], corners[:, 3:]), np.maximum(corners[:, :3], corners[:, 3:])],
                          axis=1)


def box_consensus(marks: Sequence[BoxMark], seen_by: Mapping[int, float], iou: float = 0.5,
                  threshold: float = 0.5, *, min_support: int = 2) -> list[ConsensusBox]:
    """Consensus boxes: clusters of the boxes with 3D IoU >= ``iou`` with their centre box, one vote per volunteer
    at the mean of their boxes there, the centre box the votes' weighted per-coordinate median; kept as points
    are. Sorted by lower z, y, x, then upper, then label."""
    weights = _check_weights(seen_by)
    _check_threshold(threshold, min_support)
    if not (math.isfinite(iou) and 0 < iou <= 1):
        raise ValueError(f"iou must be within (0, 1], not {iou}")
    if not marks:
        return []
    _check_known((m.volunteer for m in marks), weights)
    boxes = _box_array(marks)
    order = _canonical([m.volunteer for m in marks], boxes, [m.label for m in marks])
    marks, boxes = [marks[i] for i in order], boxes[order]
    voter, voter_weight, mark_weight = _voter_codes([m.volunteer for m in marks], weights)

    # IoU >= t needs the centres within (1 - t) x the larger extent on every axis: a Chebyshev ball in units of
    # the largest extent per axis finds every candidate; the exact IoU then decides.
    scale = (boxes[:, 3:] - boxes[:, :3]).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    centres = (boxes[:, :3] + boxes[:, 3:]) / 2 / scale
    reach = (1 - iou) * (1 + 1e-9) + 1e-12
    tree = cKDTree(centres)

    def near(box: np.ndarray) -> np.ndarray:
        found = np.asarray(tree.query_ball_point((box[:3] + box[3:]) / 2 / scale, reach, p=np.inf), dtype=np.intp)
        return found[_box_iou(boxes[found], box) >= iou - _TOLERANCE]

    pairs = tree.query_pairs(reach, p=np.inf, output_type="ndarray")
    pairs = pairs[_box_iou(boxes[pairs[:, 0]], boxes[pairs[:, 1]]) >= iou - _TOLERANCE]
    result = []
    for members, box in _greedy_clusters(boxes, voter, voter_weight, mark_weight, pairs, near, _weighted_median):
        supporters, plain, weighted = _agreement((marks[i].volunteer for i in members), weights)
        if not _passes(len(supporters), weighted, threshold, min_support):
            continue
        label, share = _majority_label([marks[i].label for i in members], _shared(voter[members], mark_weight[members]))
        result.append(ConsensusBox(
            lower=(float(box[0]), float(box[1]), float(box[2])), upper=(float(box[3]), float(box[4]), float(box[5])),
            label=label, support=len(supporters), agreement=plain, weighted_agreement=weighted,
            volunteers=supporters, label_agreement=share))
    result.sort(key=lambda c: (c.lower[::-1], c.upper[::-1], c.label))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Outlines


def _check_grid(grid: SliceGrid) -> None:
    rows, cols = grid.shape
    if rows < 1 or cols < 1:
        raise ValueError(f"the grid's shape must be positive, not {grid.shape}")
    if not all(math.isfinite(p) and p > 0 for p in grid.pixel_nm) or not all(map(math.isfinite, grid.origin)):
        raise ValueError(f"the grid needs a finite origin and positive pixel sizes, not {grid}")


def _pixels(points: Sequence[tuple[float, float]], grid: SliceGrid) -> np.ndarray:
    """Flat indices of the grid's pixels whose centres are inside or on the polygon (x, y nm)."""
    xy = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(xy) < 3:
        raise ValueError(f"an outline needs at least 3 points, not {len(xy)}")
    _finite(xy, "outline points")
    cols = (xy[:, 0] - grid.origin[0]) / grid.pixel_nm[0]
    rows = (xy[:, 1] - grid.origin[1]) / grid.pixel_nm[1]
    rr, cc = draw_polygon(rows, cols, shape=grid.shape)
    return np.ravel_multi_index((rr, cc), grid.shape)


def outline_mask(points: Sequence[tuple[float, float]], grid: SliceGrid,
                 holes: Sequence[Sequence[tuple[float, float]]] = ()) -> np.ndarray:
    """A polygon (x, y nm) with optional holes as a boolean (rows, cols) mask on ``grid``: pixels whose centres
    are inside or on the outer polygon and not strictly inside a hole. Rasterising an unsimplified consensus
    outline this way gives its region back exactly."""
    _check_grid(grid)
    mask = np.zeros(grid.shape, bool)
    mask.flat[_pixels(points, grid)] = True
    for hole in holes:
        inside = np.zeros(grid.shape, bool)
        inside.flat[_pixels(hole, grid)] = True
        # Traced holes pass between pixel centres (within half a pixel once simplified): a pixel whose centre
        # lies on one is rare, and counts as in the hole.
        mask &= ~inside
    return mask


def _by_slice(marks: Iterable[OutlineMark]) -> dict[float, list[OutlineMark]]:
    slices: dict[float, list[OutlineMark]] = defaultdict(list)
    for mark in marks:
        if not math.isfinite(mark.z):
            raise ValueError("outline z must be a finite number")
        slices[round(float(mark.z), _Z_DECIMALS)].append(mark)
    return slices


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def _trace(region: np.ndarray, offset: tuple[int, int], grid: SliceGrid) -> tuple[Polygon, tuple[Polygon, ...]]:
    """The outer boundary and holes of one 8-connected region (a cropped boolean mask at ``offset``), in nm."""
    contours = find_contours(np.pad(region, 1).astype(np.uint8), 0.5, fully_connected="high")
    polygons = []
    for contour in contours:
        simple = approximate_polygon(contour, tolerance=0.5)
        if len(simple) < 4 or abs(_signed_area(simple[:-1])) == 0:  # a region a pixel or two wide
            simple = contour
        rc = simple[:-1] if np.array_equal(simple[0], simple[-1]) else simple
        x = grid.origin[0] + (rc[:, 1] - 1 + offset[1]) * grid.pixel_nm[0]
        y = grid.origin[1] + (rc[:, 0] - 1 + offset[0]) * grid.pixel_nm[1]
        polygons.append(np.stack([x, y], axis=1))
    areas = [_signed_area(p) for p in polygons]
    outer = int(np.argmax(np.abs(areas)))

    def oriented(polygon: np.ndarray, area: float, counter_clockwise: bool) -> Polygon:
        if (area > 0) != counter_clockwise:
            polygon = polygon[::-1]
        return tuple((float(x), float(y)) for x, y in polygon)

    holes = tuple(oriented(p, a, False) for i, (p, a) in enumerate(zip(polygons, areas, strict=True)) if i != outer)
    return oriented(polygons[outer], areas[outer], True), holes


def outline_consensus(marks: Sequence[OutlineMark], seen_by: Mapping[int, float], grid: SliceGrid,
                      threshold: float = 0.5, *, min_support: int = 2) -> list[ConsensusOutline]:
    """Consensus outlines per slice: the pixels enclosed by volunteers holding at least ``threshold`` of the weight
    of everyone who saw the task (and by at least ``min_support`` of them), one outline per connected region.
    Sorted by z, then by the region's first pixel in raster order."""
    weights = _check_weights(seen_by)
    _check_threshold(threshold, min_support)
    _check_grid(grid)
    if not marks:
        return []
    _check_known((m.volunteer for m in marks), weights)
    total = sum(weights.values())
    size = grid.shape[0] * grid.shape[1]
    pixel_area = grid.pixel_nm[0] * grid.pixel_nm[1]
    result = []
    for z, on_slice in sorted(_by_slice(marks).items()):
        drawn: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)  # volunteer -> (label, pixels) per outline
        for mark in sorted(on_slice, key=lambda m: (m.volunteer, m.points, m.label)):
            drawn[mark.volunteer].append((mark.label, _pixels(mark.points, grid)))
        union = {v: np.unique(np.concatenate([p for _, p in outlines])) for v, outlines in drawn.items()}
        weight = np.zeros(size)
        enclosing = np.zeros(size, np.int64)
        for volunteer, pixels in union.items():
            weight[pixels] += weights[volunteer]
            enclosing[pixels] += 1
        keep = (weight >= threshold * total - _TOLERANCE * max(total, 1.0)) & (enclosing >= min_support)
        # 8-connected, as find_contours traces them with fully_connected="high": a pixel touching the region only
        # at a corner belongs to it rather than becoming an object of its own.
        regions, count = ndimage.label(keep.reshape(grid.shape), structure=np.ones((3, 3), bool))
        if not count:
            continue
        flat_regions = regions.ravel()
        # Per region: who overlaps it, and with which label (each volunteer's label of largest overlap).
        overlaps: list[dict[int, str]] = [{} for _ in range(count + 1)]
        for volunteer, outlines in drawn.items():
            per_label: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for label, pixels in outlines:
                hit = flat_regions[pixels]
                ids, counts = np.unique(hit[hit > 0], return_counts=True)
                for region, c in zip(ids.tolist(), counts.tolist(), strict=True):
                    per_label[region][label] += c
            for region, labels in per_label.items():
                overlaps[region][volunteer] = min(labels, key=lambda label: (-labels[label], label))
        areas = np.bincount(flat_regions, minlength=count + 1)
        for region, found in enumerate(ndimage.find_objects(regions), start=1):
            if found is None:
                continue
            voters = overlaps[region]
            supporters, plain, weighted = _agreement(voters, weights)
            label, share = _majority_label([voters[v] for v in supporters], [weights[v] for v in supporters])
            crop = regions[found] == region
            outer, holes = _trace(crop, (found[0].start, found[1].start), grid)
            row, col = np.unravel_index(int(np.flatnonzero(crop)[0]), crop.shape)
            first = (found[0].start + int(row), found[1].start + int(col))
            result.append((z, first, ConsensusOutline(
                points=outer, z=z, label=label, support=len(supporters), agreement=plain,
                weighted_agreement=weighted, volunteers=supporters, area_nm2=float(areas[region]) * pixel_area,
                label_agreement=share, holes=holes)))
    result.sort(key=lambda item: (item[0], item[1]))
    return [outline for _, _, outline in result]


# ---------------------------------------------------------------------------------------------------------------
# Scores and volunteer quality


def _matches(valid: np.ndarray, cost: np.ndarray, worst: float) -> int:
    """The most one-to-one matches among ``valid`` pairs, of least total cost (each valid cost <= ``worst``)."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if not len(rows):
        return 0
    valid, cost = valid[np.ix_(rows, cols)], cost[np.ix_(rows, cols)]
    # An invalid pair costs more than any set of valid ones, so the assignment first maximises the valid pairs.
    big = (min(valid.shape) + 1) * max(worst, 1.0) + 1.0
    chosen_rows, chosen_cols = linear_sum_assignment(np.where(valid, cost, big))
    return int(valid[chosen_rows, chosen_cols].sum())


def _score_points(xyz: np.ndarray, labels: Sequence[str], ref_xyz: np.ndarray, ref_labels: Sequence[str],
                  radius_nm: float) -> Score:
    if not (math.isfinite(radius_nm) and radius_nm > 0):
        raise ValueError(f"radius_nm must be a positive number, not {radius_nm}")
    _finite(xyz, "point positions")
    _finite(ref_xyz, "point positions")
    if not len(xyz) or not len(ref_xyz):
        return Score.from_counts(0, len(xyz), len(ref_xyz))
    distance = cdist(xyz, ref_xyz)
    same = np.asarray(labels, dtype=object)[:, None] == np.asarray(ref_labels, dtype=object)[None, :]
    tp = _matches((distance <= radius_nm) & same, distance, radius_nm)
    return Score.from_counts(tp, len(xyz) - tp, len(ref_xyz) - tp)


def score_points(marks: Sequence[PointMark], expert: Sequence[PointMark], radius_nm: float) -> Score:
    """A volunteer's points against the expert's: matched one-to-one within ``radius_nm`` with equal labels, so a
    double click is one true and one false positive."""
    return _score_points(np.array([m.position for m in marks], dtype=float).reshape(-1, 3), [m.label for m in marks],
                         np.array([m.position for m in expert], dtype=float).reshape(-1, 3),
                         [m.label for m in expert], radius_nm)


def agreement_with(marks_of_one_volunteer: Sequence[PointMark], consensus_points: Sequence[ConsensusPoint],
                   radius_nm: float) -> Score:
    """How well one volunteer's points agree with the consensus, scored as against an expert."""
    if len({m.volunteer for m in marks_of_one_volunteer}) > 1:
        raise ValueError("agreement_with takes the marks of one volunteer")
    return _score_points(
        np.array([m.position for m in marks_of_one_volunteer], dtype=float).reshape(-1, 3),
        [m.label for m in marks_of_one_volunteer],
        np.array([c.position for c in consensus_points], dtype=float).reshape(-1, 3),
        [c.label for c in consensus_points], radius_nm)


def score_boxes(marks: Sequence[BoxMark], expert: Sequence[BoxMark], iou: float = 0.5) -> Score:
    """A volunteer's boxes against the expert's: matched one-to-one at 3D IoU >= ``iou`` with equal labels."""
    if not (math.isfinite(iou) and 0 < iou <= 1):
        raise ValueError(f"iou must be within (0, 1], not {iou}")
    if not marks or not expert:
        return Score.from_counts(0, len(marks), len(expert))
    boxes, reference = _box_array(marks), _box_array(expert)
    overlap = _box_iou(boxes[:, None, :], reference[None, :, :])
    same = np.asarray([m.label for m in marks], dtype=object)[:, None] == np.asarray(
        [m.label for m in expert], dtype=object)[None, :]
    tp = _matches((overlap >= iou - _TOLERANCE) & same, 1 - overlap, 1.0)
    return Score.from_counts(tp, len(marks) - tp, len(expert) - tp)


def score_outlines(marks: Sequence[OutlineMark], expert: Sequence[OutlineMark], grid: SliceGrid) -> Score:
    """Pixels of the union of ``marks`` against those of the union of ``expert``, slice by slice, summed; labels
    are not compared. ``iou`` is the pixel IoU and ``f1`` the Dice coefficient."""
    _check_grid(grid)
    mine, theirs = _by_slice(marks), _by_slice(expert)
    tp = fp = fn = 0
    for z in set(mine) | set(theirs):
        a = np.zeros(grid.shape, bool)
        b = np.zeros(grid.shape, bool)
        for mark in mine.get(z, []):
            a.flat[_pixels(mark.points, grid)] = True
        for mark in theirs.get(z, []):
            b.flat[_pixels(mark.points, grid)] = True
        tp += int((a & b).sum())
        fp += int((a & ~b).sum())
        fn += int((~a & b).sum())
    return Score.from_counts(tp, fp, fn)


QUALITY_FLOOR = 0.05
CONSENSUS_WEIGHT = 0.5  # a task scored against consensus counts half as much as one scored against an expert


def volunteer_quality(gold_f1: Sequence[float], consensus_f1: Sequence[float], prior_weight: float = 2.0,
                      prior: float = 0.5) -> float:
    """A volunteer's weight: their mean f1 shrunk towards ``prior``, within [0.05, 1].

        quality = (prior_weight * prior + sum(gold_f1) + 0.5 * sum(consensus_f1))
                  / (prior_weight + len(gold_f1) + 0.5 * len(consensus_f1))

    The prior acts as ``prior_weight`` pseudo-tasks scored ``prior`` (the mean of a Beta prior updated by
    fractional successes), so a newcomer with one lucky or unlucky task stays near the prior and the estimate
    approaches their record as tasks accumulate. A gold task counts fully; agreement with consensus counts half,
    as the consensus includes the volunteer's own vote and can itself be wrong. The floor keeps everyone's vote
    above zero, so a few bad tasks never silence a volunteer and the total weight of a task is never zero.
    The result increases with every score and stays within [0.05, 1] whatever the inputs."""
    gold = np.asarray(gold_f1, dtype=float).ravel()
    agree = np.asarray(consensus_f1, dtype=float).ravel()
    for name, values in (("gold_f1", gold), ("consensus_f1", agree)):
        if not (np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()):
            raise ValueError(f"{name} must hold numbers within [0, 1]")
    if not (math.isfinite(prior) and 0 <= prior <= 1):
        raise ValueError(f"prior must be within [0, 1], not {prior}")
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise ValueError(f"prior_weight must be a number >= 0, not {prior_weight}")
    evidence = prior_weight + len(gold) + CONSENSUS_WEIGHT * len(agree)
    if evidence == 0:
        return float(min(max(prior, QUALITY_FLOOR), 1.0))
    quality = (prior_weight * prior + gold.sum() + CONSENSUS_WEIGHT * agree.sum()) / evidence
    return float(min(max(quality, QUALITY_FLOOR), 1.0))
