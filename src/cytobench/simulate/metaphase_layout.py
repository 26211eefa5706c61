"""Layout of a metaphase spread: where each bent chromosome lies, and how many of them overlap.

A body is its centreline in local coordinates (:func:`~cytobench.simulate.chromosomes.sample_centreline`)
plus a half-width; a :class:`Pose` rotates it by ``angle`` and moves its mid-length sample to ``offset``.
Layout works on a coarse subset of the centreline samples (about one per half-width) and on the boxes
``[min - w, max + w]`` of those samples, which match the rendered masks' boxes to within a pixel.

Algorithm (:func:`layout_spread`):

1. **Spread region.** An ellipse near the image centre whose semi-axes are 28-40 % of the image sides,
   enlarged (up to 46 %) until the bodies cover at most ~8 % of it.
2. **Free placement**, longest body first: uniform position in the ellipse and uniform angle, keeping a
   gap of half a half-width to every placed body (30 tries; else the try with the largest clearance).
   One body in 25 is instead put head to head with an earlier one (DeepACEv2 Fig. 1(b)).
3. **Overlap control.** A target ``k ~ Binomial(n, overlap_target)`` of severely overlapping chromosomes
   is drawn; while the current S_o count (DeepACEv2 Eq. 14 on the boxes, tau = 0.5, through
   :func:`cytobench.evaluation.enumeration.overlapping_subset`) is below ``k``, a chromosome outside S_o is
   moved to cross another one (at 30-90 degrees) or to lie alongside it, touching or slightly overlapping;
   while it is above ``k``, a member of S_o is moved to free space. A move is kept only when it brings the
   count closer to ``k``. The mean S_o fraction over many images is therefore close to ``overlap_target``.

Confounders (never annotated): :func:`draw_fragments` adds partial-looking pieces, 20-55 % of a random
class's body with that stretch of its band pattern (a centromere waist only if the piece contains it),
placed anywhere in the image away from the chromosomes when possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cytobench.evaluation.enumeration import overlapping_subset
from cytobench.simulate.chromosomes import (
    CLASSES,
    MAX_RELATIVE_LENGTH,
    band_profile,
    render_body,
    sample_centreline,
)

__all__ = [
    "Body",
    "Pose",
    "Spread",
    "draw_fragments",
    "layout_spread",
    "place_free",
    "pose_points",
    "spread_region",
]

_FREE_TRIES = 30
_HEAD_TO_HEAD_P = 0.04
_TAU = 0.5


@dataclass(frozen=True)
class Body:
    """A body to place.

    Attributes:
        local: (M, 2) float64 centreline in local coordinates (mid-length sample at the origin).
        half_width: half-width in px.
    """

    local: np.ndarray
    half_width: float

    @property
    def coarse(self) -> np.ndarray:
        """Indices of the layout samples (about one per half-width, both ends included)."""
        step = max(1, int(2 * self.half_width))  # centreline samples are 0.5 px apart
        idx = np.arange(0, len(self.local), step)
        return idx if idx[-1] == len(self.local) - 1 else np.append(idx, len(self.local) - 1)

    @property
    def length(self) -> float:
        return float(np.hypot(*(self.local[1] - self.local[0]))) * (len(self.local) - 1)


@dataclass(frozen=True)
class Pose:
    """Rotation ``angle`` (radians) about the local origin, then translation to ``offset`` (x, y)."""

    angle: float
    offset: tuple[float, float]


@dataclass(frozen=True)
class Spread:
    """Elliptical spread region: ``centre`` (x, y) and semi-axes ``axes`` (a_x, a_y) in px."""

    centre: tuple[float, float]
    axes: tuple[float, float]


def pose_points(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Apply ``pose`` to (M, 2) local points; returns (M, 2) image coordinates."""
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    out = points @ np.array([[c, s], [-s, c]])
    out += np.asarray(pose.offset)
    return out


def spread_region(rng: np.random.Generator, bodies: list[Body], width: int, height: int) -> Spread:
    """Draw the spread ellipse (see the module docstring)."""
    centre = (width * (0.5 + rng.normal(0.0, 0.03)), height * (0.5 + rng.normal(0.0, 0.03)))
    ax, ay = width * rng.uniform(0.28, 0.40), height * rng.uniform(0.28, 0.40)
    body_area = sum(b.length * 2.0 * b.half_width for b in bodies)
    grow = max(1.0, math.sqrt(body_area / 0.08 / (math.pi * ax * ay)))
    return Spread(centre, (min(ax * grow, 0.46 * width), min(ay * grow, 0.46 * height)))


class _State:
    """Placed bodies: their poses, coarse posed samples and boxes (NaN rows while unplaced)."""

    def __init__(self, bodies: list[Body], width: int, height: int) -> None:
        self.bodies, self.width, self.height = bodies, width, height
        self.coarse_local = [b.local[b.coarse] for b in bodies]
        self.poses: list[Pose | None] = [None] * len(bodies)
        self.points: list[np.ndarray | None] = [None] * len(bodies)
        self.boxes = np.full((len(bodies), 4), np.nan)
        self._flat: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # points, widths, owners

    def set_points(self, i: int, pts: np.ndarray) -> None:
        """Record the posed coarse points of body ``i`` (for clearance tests)."""
        self.points[i] = pts
        self._flat = None

    def tangent(self, i: int, sample: int) -> float:
        """Local heading (radians) of body ``i`` at centreline sample ``sample``."""
        local = self.bodies[i].local
        d = local[min(sample + 1, len(local) - 1)] - local[max(sample - 1, 0)]
        return math.atan2(d[1], d[0])

    def candidate(self, i: int, pose: Pose) -> tuple[np.ndarray, np.ndarray] | None:
        """Posed coarse points and box of body ``i``, or None when the body would leave the image."""
        pts = pose_points(self.coarse_local[i], pose)
        w = self.bodies[i].half_width
        box = np.concatenate([pts.min(axis=0) - w, pts.max(axis=0) + w])
        if box[0] < 1 or box[1] < 1 or box[2] > self.width - 1 or box[3] > self.height - 1:
            return None
        return pts, box

    def clearance(self, i: int, pts: np.ndarray, ignore: int = -1) -> float:
        """Smallest gap (px, negative when overlapping) between body ``i`` at ``pts`` and the others.

        Only bodies within reach are measured: the result is ``inf`` when every other body is more than
        a half-width of body ``i`` away.
        """
        if self._flat is None:
            placed = [k for k, p in enumerate(self.points) if p is not None]
            if not placed:
                return math.inf
            sizes = [len(self.points[k]) for k in placed]
            self._flat = (
                np.concatenate([self.points[k] for k in placed]),
                np.repeat([self.bodies[k].half_width for k in placed], sizes),
                np.repeat(placed, sizes),
            )
        theirs, widths, owners = self._flat
        reach = 2.0 * self.bodies[i].half_width + float(widths.max())
        lo, hi = pts.min(axis=0) - reach, pts.max(axis=0) + reach
        keep = (owners != i) & (owners != ignore) & np.all((theirs >= lo) & (theirs <= hi), axis=1)
        if not keep.any():
            return math.inf
        diff = pts[:, None, :] - theirs[None, keep, :]
        dist = np.sqrt(np.einsum("mpk,mpk->mp", diff, diff))
        return float((dist - widths[None, keep]).min()) - self.bodies[i].half_width

    def commit(self, i: int, pose: Pose, pts: np.ndarray, box: np.ndarray) -> None:
        self.poses[i], self.boxes[i] = pose, box
        self.set_points(i, pts)

    def anchored(self, i: int, sample: int, target: np.ndarray, heading: float) -> Pose:
        """The pose putting local sample ``sample`` of body ``i`` at ``target`` with tangent ``heading``."""
        angle = heading - self.tangent(i, sample)
        c, s = math.cos(angle), math.sin(angle)
        p = self.bodies[i].local[sample]
        return Pose(
            angle, (float(target[0] - (c * p[0] - s * p[1])), float(target[1] - (s * p[0] + c * p[1])))
        )

    def posed_frame(self, j: int, sample: int) -> tuple[np.ndarray, float]:
        """Image position and tangent heading of sample ``sample`` of placed body ``j``."""
        pose = self.poses[j]
        assert pose is not None
        pos = pose_points(self.bodies[j].local[sample : sample + 1], pose)[0]
        return pos, self.tangent(j, sample) + pose.angle


def _free_try(rng: np.random.Generator, state: _State, i: int, spread: Spread | None) -> Pose:
    if spread is None:
        centre = (rng.uniform(0, state.width), rng.uniform(0, state.height))
    else:
        r, phi = math.sqrt(rng.random()), rng.uniform(0.0, 2.0 * math.pi)
        centre = (
            spread.centre[0] + spread.axes[0] * r * math.cos(phi),
            spread.centre[1] + spread.axes[1] * r * math.sin(phi),
        )
    return Pose(rng.uniform(0.0, 2.0 * math.pi), centre)


def _place_free(
    rng: np.random.Generator, state: _State, i: int, spread: Spread | None, tries: int = _FREE_TRIES
) -> tuple[Pose, np.ndarray, np.ndarray] | None:
    """Best of up to ``tries`` free poses (the first with a clear gap, else the largest clearance)."""
    best: tuple[float, Pose, np.ndarray, np.ndarray] | None = None
    for _ in range(tries):
        pose = _free_try(rng, state, i, spread)
        cand = state.candidate(i, pose)
        if cand is None:
            continue
        gap = state.clearance(i, cand[0])
        if best is None or gap > best[0]:
            best = (gap, pose, *cand)
        if gap >= 0.5 * state.bodies[i].half_width:
            break
    return None if best is None else best[1:]


def _head_to_head(rng: np.random.Generator, state: _State, i: int, j: int) -> Pose:
    """Body ``i`` continuing body ``j`` beyond one of its ends, the round caps touching."""
    m_j = len(state.bodies[j].local) - 1
    end = int(rng.integers(2)) * m_j
    pos, heading = state.posed_frame(j, end)
    heading += math.pi if end == 0 else 0.0  # outwards
    gap = (state.bodies[i].half_width + state.bodies[j].half_width) * rng.uniform(0.8, 1.0)
    target = pos + gap * np.array([math.cos(heading), math.sin(heading)])
    sample = int(rng.integers(2)) * (len(state.bodies[i].local) - 1)
    inward = heading + rng.normal(0.0, 0.3) + (math.pi if sample else 0.0)
    return state.anchored(i, sample, target, inward)


def _attach(rng: np.random.Generator, state: _State, i: int, j: int) -> Pose:
    """Body ``i`` crossing body ``j`` (30-90 degrees) or lying alongside it, touching or overlapping."""
    m_i, m_j = len(state.bodies[i].local), len(state.bodies[j].local)
    pos, heading = state.posed_frame(j, int(rng.integers(int(0.15 * m_j), max(int(0.85 * m_j), 1))))
    sample = int(rng.integers(int(0.2 * m_i), max(int(0.8 * m_i), 1)))
    sign = rng.choice([-1.0, 1.0])
    if rng.random() < 0.5:
        return state.anchored(i, sample, pos, heading + sign * rng.uniform(math.pi / 6, math.pi / 2))
    gap = (state.bodies[i].half_width + state.bodies[j].half_width) * rng.uniform(0.6, 1.1)
    target = pos + sign * gap * np.array([-math.sin(heading), math.cos(heading)])
    return state.anchored(i, sample, target, heading + rng.normal(0.0, 0.2) + math.pi * (rng.random() < 0.5))


def layout_spread(
    rng: np.random.Generator, bodies: list[Body], width: int, height: int, overlap_target: float
) -> tuple[list[Pose], Spread]:
    """Place the chromosomes of one spread (see the module docstring).

    Args:
        rng: random generator.
        bodies: the chromosomes.
        width: image width W in px.
        height: image height H in px.
        overlap_target: wanted mean fraction of chromosomes in S_o.

    Returns:
        ``(poses, spread)``: one pose per body (same order) and the spread ellipse.

    Raises:
        ValueError: a body cannot fit in the image at any tried pose.
    """
    n = len(bodies)
    state = _State(bodies, width, height)
    spread = spread_region(rng, bodies, width, height)
    for i in sorted(range(n), key=lambda k: -bodies[k].length):
        placed = [k for k in range(n) if state.poses[k] is not None]
        if placed and rng.random() < _HEAD_TO_HEAD_P:
            j = placed[int(rng.integers(len(placed)))]
            pose = _head_to_head(rng, state, i, j)
            cand = state.candidate(i, pose)
            if cand is not None and state.clearance(i, cand[0], ignore=j) >= 0.5 * bodies[i].half_width:
                state.commit(i, pose, *cand)
                continue
        found = _place_free(rng, state, i, spread) or _place_free(rng, state, i, None, tries=200)
        if found is None:
            raise ValueError(
                f"a chromosome of {bodies[i].length:.0f} px does not fit in a {width}x{height} image; lower the scale"
            )
        state.commit(i, *found)
    if n >= 2:
        _control_overlap(rng, state, spread, int(rng.binomial(n, overlap_target)))
    return [p for p in state.poses if p is not None], spread


def _control_overlap(rng: np.random.Generator, state: _State, spread: Spread, k: int) -> None:
    """Move chromosomes until the S_o count equals ``k`` (or the move budget is spent)."""
    n = len(state.bodies)
    count = int(overlapping_subset(state.boxes, _TAU).sum())
    for _ in range(4 * n):
        if count == k:
            return
        members = overlapping_subset(state.boxes, _TAU)
        pool = np.flatnonzero(~members if count < k else members)
        if len(pool) == 0:
            return
        i = int(pool[rng.integers(len(pool))])
        best: tuple[int, Pose, np.ndarray, np.ndarray] | None = None
        for _try in range(4):
            if count < k:
                j = int(rng.integers(n - 1))
                pose = _attach(rng, state, i, j + (j >= i))
                cand = state.candidate(i, pose)
                if cand is None:
                    continue
                pts, box = cand
            else:
                free = _place_free(rng, state, i, spread, tries=6)
                if free is None:
                    continue
                pose, pts, box = free
            boxes = state.boxes.copy()
            boxes[i] = box
            new = int(overlapping_subset(boxes, _TAU).sum())
            if best is None or abs(new - k) < abs(best[0] - k):
                best = (new, pose, pts, box)
        if best is not None and abs(best[0] - k) < abs(count - k):
            count = best[0]
            state.commit(i, *best[1:])


def place_free(
    rng: np.random.Generator, body: Body, width: int, height: int, obstacles: list[tuple[np.ndarray, float]]
) -> Pose | None:
    """A pose anywhere in the image, preferring a clear gap to ``obstacles`` (for confounders).

    Args:
        rng: random generator.
        body: the body to place.
        width: image width in px.
        height: image height in px.
        obstacles: ``(points (P, 2), half_width)`` of bodies already there.

    Returns:
        The pose, or None when the body does not fit in the image.
    """
    bodies = [body] + [Body(p[:1], w) for p, w in obstacles]
    state = _State(bodies, width, height)
    for k, (pts, _w) in enumerate(obstacles, start=1):
        state.set_points(k, pts)
    found = _place_free(rng, state, 0, None, tries=12)
    return None if found is None else found[0]


# ------------------------------------------------------------------------------------------- confounders
def draw_fragments(
    rng: np.random.Generator,
    od: np.ndarray,
    n: int,
    scale: float,
    obstacles: list[tuple[np.ndarray, float]],
) -> None:
    """Add ``n`` chromosome fragments to the optical-density canvas ``od`` (H, W) in place.

    Args:
        rng: random generator.
        od: (H, W) float32 optical density.
        n: number of fragments.
        scale: length of chromosome 1 in px.
        obstacles: ``(coarse points (P, 2), half_width)`` of the chromosomes; fragments are appended.
    """
    height, width = od.shape
    for _ in range(n):
        index = int(rng.integers(1, 25))
        cls = CLASSES[index - 1]
        frac = rng.uniform(0.2, 0.55)
        u0 = rng.uniform(0.0, 1.0 - frac)
        half_width = 0.06 * scale * rng.uniform(0.9, 1.05)
        length = max(
            scale * cls.relative_length / MAX_RELATIVE_LENGTH * frac * rng.uniform(0.9, 1.1), half_width
        )
        body = Body(sample_centreline(rng, length, bend=0.5), half_width)
        pose = place_free(rng, body, width, height, obstacles)
        if pose is None:
            continue
        points = pose_points(body.local, pose)
        ci = cls.centromere_index
        drawn = render_body(
            points,
            half_width,
            band_profile(index),
            (width, height),
            centromere=(ci - u0) / frac * length if u0 < ci < u0 + frac else None,
            u_range=(u0, u0 + frac),
            density=rng.uniform(0.9, 1.2),
        )
        if drawn is not None:
            od[drawn.y0 : drawn.y0 + drawn.od.shape[0], drawn.x0 : drawn.x0 + drawn.od.shape[1]] += drawn.od
            obstacles.append((points[body.coarse], half_width))
