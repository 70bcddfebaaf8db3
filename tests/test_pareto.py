from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distopt.pareto import hypervolume, non_dominated, pareto_ranks

MAXMIN = ["max", "min"]  # (accuracy, bytes)


def test_front_hand_computed():
    pts = np.array([[0.99, 1000], [0.98, 500], [0.97, 800], [0.99, 2000], [0.90, 100]])
    assert non_dominated(pts, MAXMIN).tolist() == [True, True, False, False, True]


def test_ties_and_duplicates_stay_on_the_front():
    pts = np.array([[0.9, 100], [0.9, 100], [0.95, 100], [0.95, 200]])
    # (0.95, 100) dominates everything else; its duplicate-free peers fall.
    assert non_dominated(pts, MAXMIN).tolist() == [False, False, True, False]
    dup = np.array([[0.9, 100], [0.9, 100], [0.8, 50]])
    assert non_dominated(dup, MAXMIN).tolist() == [True, True, True]


def test_nan_is_infeasible_and_inf_compares():
    pts = np.array([[np.nan, 10], [0.5, np.nan], [0.6, np.inf], [0.6, 1000], [-np.inf, 1]])
    assert non_dominated(pts, MAXMIN).tolist() == [False, False, False, True, True]
    assert pareto_ranks(pts, MAXMIN).tolist() == [-1, -1, 1, 0, 0]


def test_ranks_peel_fronts():
    pts = np.array([[1, 1], [2, 2], [3, 3], [1, 3], [3, 1]], float)
    assert pareto_ranks(pts, ["min", "min"]).tolist() == [0, 1, 2, 1, 1]


def test_hypervolume_2d_hand_computed():
    # Minimize both, reference (4, 4): points (1,3), (2,2), (3,1) -> staircase area 3+2+1 = 6.
    pts = np.array([[1, 3], [2, 2], [3, 1]], float)
    assert hypervolume(pts, ["min", "min"], [4, 4]) == pytest.approx(6.0)
    # Dominated, duplicate and out-of-reference points add nothing.
    more = np.vstack([pts, [[2, 2], [3, 3], [5, 0], [np.nan, 0]]])
    assert hypervolume(more, ["min", "min"], [4, 4]) == pytest.approx(6.0)
    # A point on the reference boundary adds nothing either.
    assert hypervolume(np.array([[4.0, 0.0]]), ["min", "min"], [4, 4]) == 0.0


def test_hypervolume_with_a_maximized_objective():
    # accuracy max, log10 bytes min; reference (0.9 accuracy, 6 = 1 MB)
    pts = np.array([[0.99, 4.0], [0.95, 3.0]])
    expected = (0.99 - 0.9) * (6 - 4) + (0.95 - 0.9) * (4 - 3)
    assert hypervolume(pts, MAXMIN, [0.9, 6.0]) == pytest.approx(expected)
    assert hypervolume(np.empty((0, 2)), MAXMIN, [0.9, 6.0]) == 0.0
    assert math.isinf(hypervolume(np.array([[math.inf, 4.0]]), MAXMIN, [0.9, 6.0]))
    with pytest.raises(ValueError, match="reference must be finite"):
        hypervolume(pts, MAXMIN, [math.nan, 6.0])
    with pytest.raises(ValueError, match="directions must be"):
        hypervolume(pts, ["up", "min"], [0, 0])


def test_hypervolume_3d_hand_computed():
    # Two boxes in the unit cube with reference (1,1,1): 0.5^3 + 0.5^3 - overlap 0.25^3... use
    # disjoint-ish corners: (0,0,0.5) covers 1*1*0.5; (0.5,0.5,0) adds 0.5*0.5*0.5.
    pts = np.array([[0, 0, 0.5], [0.5, 0.5, 0]], float)
    assert hypervolume(pts, ["min"] * 3, [1, 1, 1]) == pytest.approx(0.5 + 0.125)


def _mc_volume(p: np.ndarray, ref: np.ndarray, n: int = 200_000) -> float:
    rng = np.random.default_rng(0)
    lo = p.min(0)
    samples = lo + rng.random((n, p.shape[1])) * (ref - lo)
    covered = np.zeros(n, bool)
    for q in p:
        covered |= np.all(samples >= q, axis=1)
    return covered.mean() * np.prod(ref - lo)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1,
                max_size=8))
def test_property_3d_matches_inclusion_exclusion(points):
    p = np.array(points)
    ref = np.ones(3) * 1.0
    keep = np.all(p < ref, axis=1)
    exact = 0.0
    q = p[keep]
    # Inclusion-exclusion over subsets: exact for small sets.
    for r in range(1, len(q) + 1):
        for sub in itertools.combinations(range(len(q)), r):
            corner = q[list(sub)].max(0)
            exact += (-1) ** (r + 1) * np.prod(ref - corner)
    assert hypervolume(p, ["min"] * 3, ref) == pytest.approx(exact, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=20))
def test_property_front_is_exactly_the_undominated(points):
    p = np.array(points)
    mask = non_dominated(p, ["min", "min"])
    for i in range(len(p)):
        dominated = any(np.all(p[j] <= p[i]) and np.any(p[j] < p[i]) for j in range(len(p)))
        assert mask[i] == (not dominated)
    # Removing dominated points never changes the hypervolume.
    assert hypervolume(p, ["min", "min"], [1.5, 1.5]) == \
        pytest.approx(hypervolume(p[mask], ["min", "min"], [1.5, 1.5]))
