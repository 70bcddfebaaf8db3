"""The search's Optuna samplers (distopt.orchestration.samplers): what Ray Tune pickles."""

from __future__ import annotations

import pickle
import threading

import optuna
import pytest
from ray import cloudpickle

from distopt.config import load_config
from distopt.orchestration.samplers import make_sampler


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random"])
def test_every_sampler_survives_the_pickling_tune_does_and_still_samples(name):
    """Tune pickles the searcher, sampler included, when a Tuner is made (Optuna 5.1's NSGA-II
    holds a threading.Lock: unpicklable as Optuna makes it, and every search failed at once).
    A copy gets new locks of the same kind and samples as the original would: the same seed,
    the same draws."""
    cfg = load_config(None, [f"search.sampler={name}", "search.seed=7"])
    sampler = make_sampler(cfg)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    copy = pickle.loads(cloudpickle.dumps(sampler))
    for k, v in vars(sampler).items():
        if isinstance(v, type(threading.Lock())):
            assert isinstance(getattr(copy, k), type(v)) and getattr(copy, k) is not v
    draws = []
    for s in (sampler, copy):
        study = optuna.create_study(sampler=s, directions=["maximize", "minimize"])
        trials = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
                  for _ in range(3)]
        draws.append([t.params["x"] for t in trials])
    assert draws[0] == draws[1]
