from __future__ import annotations

from types import SimpleNamespace

from distopt import metrics as M
from distopt.config import load_config
from distopt.orchestration.progress import ProgressTable

from conftest import CONFIGS


def _trial(i: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"trial_{i:05d}", config={"model.channels": 4 + i},
                           last_result={M.EPOCH: 2, M.PHASE: "final", M.VAL_ACCURACY: 0.9,
                                        M.SIZE_BYTES: 1000.0 + i})


def test_table_is_compact_running_plus_recent_finished():
    cfg = load_config(CONFIGS / "mnist_cnn.yaml")  # 13 searched keys
    table = ProgressTable(cfg, interval_s=1e9)
    trials = [_trial(i) for i in range(9)]
    for t in trials:
        table.on_trial_start(0, trials, t)
    for t in trials[:7]:
        table.on_trial_complete(0, trials, t)
    table.on_trial_error(0, trials, trials[7])
    text = table.render()
    lines = text.splitlines()
    assert lines[0] == "[7 done, 1 failed, 0 of 180 s]"  # the default search has a budget
    header = lines[1].split()
    assert header[:2] == ["trial", "status"] and len(header) == 2 + 6 + 4  # 6 searched keys
    rows = lines[2:]
    # 1 running + the 5 most recently finished (the failed one among them); older ones hidden.
    assert len(rows) == 6
    assert sum("RUNNING" in r for r in rows) == 1 and sum("FAILED" in r for r in rows) == 1
    assert not any(r.startswith("00000") for r in rows)
    # A trial that ended without its final result was stopped early, not done.
    stopped = _trial(9)
    stopped.last_result = {M.EPOCH: 0, M.PHASE: "train", M.VAL_ACCURACY: 0.5}
    table.on_trial_start(0, trials, stopped)
    table.on_trial_complete(0, trials, stopped)
    assert "STOPPED" in table.render().splitlines()[-1] and "[8 done," in table.render()
    counted = ProgressTable(load_config(CONFIGS / "smoke.yaml"), interval_s=1e9)
    assert counted.render().splitlines()[0] == "[0 done, 0 failed of 4]"


def test_experiment_gauges_count_the_trial_that_is_ending(monkeypatch):
    """Tune sets the ending trial's status after its callbacks: the gauges must still count it
    (without that, the last trial was missing from `distopt_trials_finished`)."""

    import distopt.orchestration.progress
    from distopt.orchestration.progress import ExperimentGauges

    seen = []
    monkeypatch.setattr(distopt.orchestration.progress, "record_experiment",
                        lambda *args: seen.append(args))
    cfg = load_config(CONFIGS / "smoke.yaml")

    def trial(status: str, acc: float, size: float) -> SimpleNamespace:
        return SimpleNamespace(status=status, last_result={M.PHASE: "final", M.VAL_ACCURACY: acc,
                                                           M.SIZE_BYTES: size})

    done = [trial("TERMINATED", 0.9, 1000.0), trial("TERMINATED", 0.8, 5000.0)]
    ending, broken = trial("RUNNING", 0.95, 2000.0), trial("ERROR", 0.5, 10.0)
    gauges = ExperimentGauges(cfg)
    gauges.on_trial_complete(0, [*done, ending, broken], ending)
    name, finished, failed, hv, front = seen[-1]
    assert (name, finished, failed, front) == ("smoke", 3, 1, 2)  # 5000 B at 0.8 is dominated
    assert hv > 0
    gauges.on_trial_error(0, [*done, ending], ending)
    assert seen[-1][1:3] == (2, 1)
