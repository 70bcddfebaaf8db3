"""Multi-objective early stopping: the rung ranking against brute force, and the scheduler's
decisions on synthetic rung data (no Ray instance: the scheduler is driven directly)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from distopt import metrics as M
from distopt.pareto import promotion_order
from distopt.orchestration.scheduler import (MultiObjectiveASHA, keeps, rung_epochs,
                                             rung_vector, unstopped)
from distopt.results.objectives import beyond_worst


def _reference(pts, dirs):
    return [beyond_worst(pts[:, j], d) for j, d in enumerate(dirs)]


# ---- brute force, written independently of distopt.pareto ----------------------------------

def _dominates(a, b, dirs) -> bool:
    better = [(x > y) if d == "max" else (x < y) for x, y, d in zip(a, b, dirs)]
    no_worse = [(x >= y) if d == "max" else (x <= y) for x, y, d in zip(a, b, dirs)]
    return all(no_worse) and any(better)


def _fronts(points, dirs) -> list[int]:
    """Front index of each point by peeling: front 0 = not dominated by any point, ..."""
    left, front, k = set(range(len(points))), [0] * len(points), 0
    while left:
        layer = {i for i in left if not any(_dominates(points[j], points[i], dirs)
                                            for j in left if j != i)}
        for i in layer:
            front[i] = k
        left -= layer
        k += 1
    return front


def _volume(points, dirs, ref) -> float:
    """Dominated volume by enumerating the grid cells between all distinct coordinates."""
    if not points:
        return 0.0
    # Minimization coordinates.
    pts = [[-v if d == "max" else v for v, d in zip(p, dirs)] for p in points]
    r = [-v if d == "max" else v for v, d in zip(ref, dirs)]
    axes = [sorted({p[j] for p in pts if p[j] < r[j]} | {r[j]}) for j in range(len(dirs))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = [axes[j][c] for j, c in enumerate(cell)]
        hi = [axes[j][c + 1] for j, c in enumerate(cell)]
        if any(all(p[j] <= lo[j] for j in range(len(dirs))) for p in pts):
            total += math.prod(h - lo_ for h, lo_ in zip(hi, lo))
    return total


def _brute_order(points, dirs, ref) -> list[int]:
    front = _fronts(points, dirs)
    contrib = []
    for i in range(len(points)):
        same = [points[j] for j in range(len(points)) if front[j] == front[i]]
        without = [points[j] for j in range(len(points)) if front[j] == front[i] and j != i]
        contrib.append(_volume(same, dirs, ref) - _volume(without, dirs, ref))
    return sorted(range(len(points)), key=lambda i: (front[i], -round(contrib[i], 12), i))


@pytest.mark.parametrize("dims", [2, 3])
def test_rung_ranking_matches_brute_force_on_synthetic_rungs(dims):
    rng = np.random.default_rng(dims)
    dirs = ["max", "min", "min"][:dims]
    checked = 0
    for _ in range(150):
        n = int(rng.integers(1, 9))
        # Coarse values so that ties and exact duplicates occur often.
        pts = np.round(rng.uniform(0, 1, (n, dims)) * 4) / 4
        ref = _reference(pts, dirs)
        expected = _brute_order(pts.tolist(), dirs, ref)
        assert promotion_order(pts, dirs, ref).tolist() == expected
        # The front's ends by brute force: best (ties included) on some objective.
        ends = {i for i in range(n) if any(
            all((pts[i][j] >= q[j]) if d == "max" else (pts[i][j] <= q[j]) for q in pts)
            for j, d in enumerate(dirs))}
        for factor in (2, 3, 4):
            keep = set(expected[:math.ceil(n / factor)])
            assert {i for i in range(n) if keeps(pts, i, dirs, factor)} == keep
            assert {i for i in range(n) if keeps(pts, i, dirs, factor, extremes=True)} == \
                keep | ends
            checked += 1
    assert checked == 450


def test_an_ordering_is_not_read_as_a_rank():
    """Syne Tune's MOASHA trap: the position of a trial in the ordering decides, not the value
    stored at the trial's own index. Here the ordering is [1, 2, 0]: read as ranks it would
    promote index 2 (whose entry is 0) instead of index 1."""
    dirs = ["max", "min"]
    # Index 0 is dominated by both others; 1 and 2 are on the front, 1 spreads it more.
    pts = np.array([[0.5, 5.0], [0.97, 3.5], [0.8, 2.9]])
    assert promotion_order(pts, dirs, _reference(pts, dirs)).tolist() == [1, 2, 0]
    assert [i for i in range(3) if keeps(pts, i, dirs, 3)] == [1]  # ceil(3 / 3) = 1 goes on
    assert [i for i in range(3) if keeps(pts, i, dirs, 2)] == [1, 2]


def test_duplicates_rank_behind_points_that_spread_the_front():
    pts = np.array([[0.9, 3.0], [0.9, 3.0], [0.8, 2.0]])
    order = promotion_order(pts, ["max", "min"], _reference(pts, ["max", "min"]))
    assert order.tolist()[0] == 2  # the duplicates contribute no exclusive volume


def test_rungs_and_rung_vectors():
    assert rung_epochs(1, 3, 10) == [1, 3, 9]
    assert rung_epochs(2, 2, 8) == [2, 4]
    assert rung_epochs(1, 3, 1) == []
    result = {M.VAL_ACCURACY: 0.9, M.SIZE_BYTES: math.nan, M.EXPECTED_SIZE_BYTES: 1000.0,
              M.LATENCY_MS: math.nan}
    v = rung_vector(result, [(M.VAL_ACCURACY, "max"), (M.SIZE_BYTES, "min"),
                             (M.LATENCY_MS, "min")])
    assert v[:2] == [0.9, 3.0] and math.isnan(v[2])


def _trial(i: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"t{i}")


def _result(epoch: int, acc: float, size: float, phase: str = "train") -> dict:
    return {M.EPOCH: epoch, M.PHASE: phase, M.VAL_ACCURACY: acc, M.EXPECTED_SIZE_BYTES: size,
            M.SIZE_BYTES: math.nan, M.LATENCY_MS: math.nan}


def test_scheduler_stops_trials_outside_the_top_of_each_rung():
    s = MultiObjectiveASHA([(M.VAL_ACCURACY, "max"), (M.SIZE_BYTES, "min")], grace_epochs=1,
                           reduction_factor=2, dense_epochs=4)
    assert sorted(s.rungs) == [1, 2]
    C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
    # Rung 1 (after epoch 0). The first trial goes on for lack of competition.
    assert s.on_trial_result(None, _trial(0), _result(0, 0.80, 1e4)) == C
    # Dominated by t0 (less accurate, larger): 2nd of 2, ceil(2/2) = 1 goes on.
    assert s.on_trial_result(None, _trial(1), _result(0, 0.70, 2e4)) == S
    # Trades accuracy for size against t0: on the front; of 3, the top 2 go on.
    assert s.on_trial_result(None, _trial(2), _result(0, 0.75, 1e3)) == C
    # Epochs between rungs, fine-tuning and final results never stop a trial.
    assert s.on_trial_result(None, _trial(3), _result(2, 0.10, 1e6)) == C
    assert s.on_trial_result(None, _trial(3), _result(4, 0.10, 1e6, "finetune")) == C
    assert s.on_trial_result(None, _trial(3), {M.PHASE: "final", M.EPOCH: 4}) == C
    assert s.stopped == {"t1": 1}
    # Rung 2 (after epoch 1) has its own record.
    assert s.on_trial_result(None, _trial(2), _result(1, 0.76, 1e3)) == C
    assert s.on_trial_result(None, _trial(0), _result(1, 0.70, 2e3)) == S  # dominated by t2
    assert s.stopped == {"t1": 1, "t0": 2}


def test_the_most_accurate_slow_learner_goes_on_among_small_fast_ones():
    """The case that broke the headline search: at the first rung, small models have learned
    fast and a large one (the most accurate at the end) trails them on accuracy and is the
    largest. Ranked by spread alone it is stopped; as the most accurate it goes on."""
    objectives = [(M.VAL_ACCURACY, "max"), (M.SIZE_BYTES, "min")]
    C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
    small = [(0.95, 2e3), (0.955, 3e3), (0.96, 4e3), (0.962, 5e3), (0.958, 6e3)]
    large = (0.963, 9e4)  # barely the most accurate, 15x the bytes: last by spread
    for extremes, verdict in ((False, S), (True, C)):
        s = MultiObjectiveASHA(objectives, grace_epochs=1, reduction_factor=3, dense_epochs=9,
                               keep_extremes=extremes)
        for i, (acc, size) in enumerate(small):
            s.on_trial_result(None, _trial(i), _result(0, acc, size))
        assert s.on_trial_result(None, _trial(9), _result(0, *large)) == verdict
        # The smallest is an end too; a middle point dominated by none but best on nothing
        # stops under either rule once the rung is full.
        assert s.on_trial_result(None, _trial(10), _result(0, 0.9, 1e3)) == C
        assert s.on_trial_result(None, _trial(11), _result(0, 0.956, 5.5e3)) == S


def test_an_unstopped_share_of_trials_is_never_stopped():
    assert [k for k in range(12) if unstopped(k, 0.25)] == [3, 7, 11]
    assert not any(unstopped(k, 0.0) for k in range(100))
    assert all(unstopped(k, 1.0) for k in range(100))
    assert sum(unstopped(k, 0.1) for k in range(1000)) == 100
    s = MultiObjectiveASHA([(M.VAL_ACCURACY, "max"), (M.SIZE_BYTES, "min")], grace_epochs=1,
                           reduction_factor=2, dense_epochs=4, unstopped_share=0.5)
    for i in range(4):
        s.on_trial_add(None, _trial(i))
    assert s.exempt == {"t1", "t3"}
    assert s.on_trial_result(None, _trial(0), _result(0, 0.80, 1e3)) == TrialScheduler.CONTINUE
    # Both dominated by t0 and best on nothing: the exempt one goes on, the other stops.
    assert s.on_trial_result(None, _trial(1), _result(0, 0.70, 2e3)) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, _trial(2), _result(0, 0.70, 2e3)) == TrialScheduler.STOP
